"""rnnfast: fused LSTM kernels with freeze masks, as drop-ins for torch.nn.LSTM.

    import rnnfast
    lstm = rnnfast.LSTM(input_size, hidden_size, num_layers=2)   # like torch.nn.LSTM
    rnnfast.freeze(lstm, layers=[0])                             # fine-tune the top only
"""
from . import autograd as _autograd  # registers the rnnfast:: torch.library ops
from .backends import available_backends
from .freeze import freeze, frozen_mask, trainable_summary, unfreeze
from .functional import lstm_layer
from .modules import LSTM, LSTMCell, convert
from . import transfer

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMCell", "convert", "freeze", "unfreeze", "frozen_mask",
           "trainable_summary", "lstm_layer", "available_backends", "transfer", "__version__"]
