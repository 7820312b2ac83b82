"""rnnfast.transfer: transfer-learning strategies on rnnfast's LSTM and freeze masks.

Pick by target data size and domain distance (docs/transfer.md has the guide):

    init_from, remap_rows           parameter initialisation from a source, with a report
    freeze_parts                    layer-wise freezing (embedding, layers, gates, units)
    FeatureExtractor                frozen encoder + pooling, cached features
    layer_groups, discriminative_param_groups, SlantedTriangularLR, GradualUnfreezer
                                    ULMFiT fine-tuning schedules
    MultiTaskModel, TaskSampler, multitask_step
                                    shared encoder, several heads
    widen, deepen, map_layers, resize_input
                                    heterogeneous transfer (other width / depth / inputs)
    DANN, DomainClassifier, grad_reverse, dann_lambda, dann_step
                                    domain-adversarial training
    bias_only                       bias-only fine-tuning
    add_lora, merge_lora, unmerge_lora, remove_lora
                                    LoRA adapters on W_ih / W_hh (base frozen)
    rank_sources                    which time-series source set to transfer from (DTW)
"""
from .adversarial import (DANN, DANNLosses, DomainClassifier, GradientReversal, GradientReversalLayer,
                          dann_lambda, dann_learning_rate, dann_losses, dann_step, grad_reverse)
from .bitfit import bias_only, is_bias
from .encoder import (POOLINGS, EncoderOutput, SequenceClassifier, SequenceEncoder, as_encoder, pool,
                      pooled_width)
from .features import FeatureExtractor, FeatureSet
from .hetero import (Deepened, Widened, deepen, layer_mapping, map_layers, near_identity_bound,
                     resize_input, widen)
from .init import Entry, RemapStats, TransferReport, init_from, load_source, remap_embedding, remap_rows
from .layers import find_embeddings, find_lstms, freeze_parts, unfreeze_parts
from .lora import add_lora, lora_parameters, merge_lora, remove_lora, unmerge_lora
from .multitask import MultiTaskModel, TaskSampler, multitask_loss, multitask_step
from .similarity import RankedSource, class_prototypes, dtw, rank_sources
from .schedules import (GradualUnfreezer, LayerGroup, SlantedTriangularLR, discriminative_lrs,
                        discriminative_param_groups, layer_groups, slanted_triangular)

__all__ = [
    # encoder and pooling
    "SequenceEncoder", "EncoderOutput", "SequenceClassifier", "as_encoder", "pool", "pooled_width",
    "POOLINGS",
    # 1. initialisation
    "init_from", "load_source", "remap_rows", "remap_embedding", "TransferReport", "Entry", "RemapStats",
    # 2. layer-wise
    "freeze_parts", "unfreeze_parts", "find_lstms", "find_embeddings",
    # 3. features
    "FeatureExtractor", "FeatureSet",
    # 4. schedules
    "layer_groups", "LayerGroup", "discriminative_lrs", "discriminative_param_groups",
    "slanted_triangular", "SlantedTriangularLR", "GradualUnfreezer",
    # 5. multi-task
    "MultiTaskModel", "TaskSampler", "multitask_loss", "multitask_step",
    # 6. heterogeneous
    "widen", "Widened", "deepen", "Deepened", "near_identity_bound", "map_layers", "layer_mapping",
    "resize_input",
    # 7. adversarial
    "GradientReversal", "GradientReversalLayer", "grad_reverse", "dann_lambda", "dann_learning_rate",
    "DomainClassifier", "DANN", "DANNLosses", "dann_losses", "dann_step",
    # 8. parameter-efficient
    "bias_only", "is_bias", "add_lora", "merge_lora", "unmerge_lora", "remove_lora",
    "lora_parameters",
    # choosing a source
    "rank_sources", "RankedSource", "class_prototypes", "dtw",
]
