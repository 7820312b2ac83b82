"""Mistakes on the command line of `python -m rnnfast` (check, bench, demo): one line on
stderr that names the mistake, exit code 2, no traceback. And what the long commands
say while they run: the demo's expected duration first, then one line per finished run
when stderr is not a terminal."""
import pytest
import torch

from rnnfast.__main__ import main
from rnnfast.demo import timeseries
from rnnfast.progress import Progress

# A GPU index this machine lacks: on a CPU-only machine any CUDA device is missing.
MISSING_GPU = f"cuda:{torch.cuda.device_count() + 7}"
MISSING_GPU_SAYS = "this machine has no usable CUDA device" if not torch.cuda.is_available() else "CUDA device"


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", [[], ["check"], ["bench"], ["demo"]])
@pytest.mark.parametrize("device, message", [
    (MISSING_GPU, MISSING_GPU_SAYS),
    ("foo", "expected auto, cpu, cuda or cuda:N, got 'foo'"),
])
def test_a_device_this_machine_lacks_is_one_line(capsys, command, device, message):
    err = _one_line_error(capsys, [*command, "--device", device])
    assert "argument --device: " in err and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_only_machine_says_to_use_the_cpu(capsys):
    err = _one_line_error(capsys, ["--device", "cuda"])
    assert err.startswith("python -m rnnfast: error: argument --device: 'cuda': this machine has no usable "
                          "CUDA device") and "use --device cpu" in err


@pytest.mark.parametrize("argv", [
    ["--seq", "0"], ["check", "--batch", "-1"], ["--hidden", "0"], ["check", "--repeats", "0"],
    ["bench", "--repeats", "0"], ["demo", "--seeds", "0"],
])
def test_sizes_and_counts_must_be_positive(capsys, argv):
    err = _one_line_error(capsys, argv)
    assert f"argument {argv[-2]}: expected a positive integer, got {argv[-1]!r}" in err


@pytest.mark.parametrize("argv", [
    ["demo", "--pair", "GunPoint->ArrowHead"], ["check", "--rep", "1"], ["bench", "--provider", "torch"],
    ["--dev=cpu"],
])
def test_abbreviated_options_are_rejected(capsys, argv):
    err = _one_line_error(capsys, argv)
    assert f"unrecognized arguments: {' '.join(argv[-2:]) if len(argv) > 1 else argv[0]}" in err


def _write_sets(root, names, rows=8, length=10):
    for name in names:
        (root / name).mkdir()
        lines = "\n".join(",".join(str((i * 7 + t * (1 + i % 2)) % 5) for t in range(length)) + f":{'ab'[i % 2]}"
                          for i in range(rows))
        for split in ("TRAIN", "TEST"):
            (root / name / f"{name}_{split}.ts").write_text(
                f"@problemName {name}\n@univariate true\n@classLabel true a b\n@data\n{lines}\n")


def test_an_unknown_set_lists_the_sets_closest_first(capsys, tmp_path):
    _write_sets(tmp_path, ["GunPointAgeSpan", "GunPoint", "Wafer"])
    err = _one_line_error(capsys, ["demo", "--data-root", str(tmp_path), "--pairs", "GunPont->Wafer"])
    assert "no time-series set 'GunPont'" in err
    assert err.rstrip().endswith("the sets there, closest first: GunPoint, GunPointAgeSpan, Wafer")


@pytest.mark.parametrize("pair", ["GunPoint->ArrowHead", "GunPoint → ArrowHead", " GunPoint ->ArrowHead ",
                                  "GunPoint→ArrowHead"])
def test_pairs_are_written_with_either_arrow(pair):
    assert timeseries.parse_pair(pair) == ("GunPoint", "ArrowHead")


def test_progress_off_a_terminal_is_one_line_per_run(capsys):
    progress = Progress(3, weights=[1.0, 1.0, 2.0])
    for k, note in enumerate(["acc 0.50", "", "acc 0.75"]):
        progress.start(f"run {k}")
        progress.finish(note)
    progress.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 3 and "\r" not in err
    assert lines[0].startswith("[1/3] run 0: acc 0.50 (") and "elapsed, about" in lines[0]
    assert lines[0].endswith(" left)") and lines[1].startswith("[2/3] run 1 (")
    assert lines[2].startswith("[3/3] run 2: acc 0.75 (") and "left" not in lines[2]


def test_demo_says_its_expected_duration_then_a_line_per_run(capsys, tmp_path):
    _write_sets(tmp_path, ["ArrowHead", "GunPoint"])
    assert main(["demo", "--budget", "tiny", "--tasks", "timeseries", "--seeds", "1", "--device", "cpu",
                 "--strategies", "scratch,features,widen", "--data-root", str(tmp_path),
                 "--pairs", "GunPoint → ArrowHead", "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0].startswith("expected duration on this machine: about ")
    assert "(calibrated in " in lines[0] and "; a busy machine takes longer" in lines[0]
    runs = lines[1:]
    assert len(runs) == 1 + 3 * 2 and "\r" not in err  # source pretraining + 3 strategies x (1 seed + nn.LSTM)
    assert runs[0].startswith("[1/7] GunPoint->ArrowHead: source pretraining: source acc ")
    assert runs[-1].startswith("[7/7] GunPoint->ArrowHead widen seed 0 torch: acc ")
    assert "GunPoint->ArrowHead" in out
