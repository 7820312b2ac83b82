"""`python -m rnnfast [check]`: what rnnfast can run on this machine, a parity check of
every usable backend against torch.nn.LSTM, and a quick speed comparison.
`python -m rnnfast bench`: the benchmark suite (rnnfast/bench).
`python -m rnnfast demo`: transfer-learning experiments on real data (rnnfast/demo).
`python -m rnnfast verify`: the first command to run on a GPU (rnnfast/verify)."""
from __future__ import annotations

import platform
import statistics
import sys
import time

import torch

import rnnfast
from rnnfast import backends
from rnnfast.cli_args import Parser, UsageError, device as device_arg, positive_int

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parity(backend: str, device: torch.device, dtype: torch.dtype) -> float:
    """Largest relative difference to nn.LSTM over outputs, states and all gradients
    (2 bidirectional layers with projection, odd sizes, unsorted packed input)."""
    torch.manual_seed(0)
    config = dict(input_size=13, hidden_size=20, num_layers=2, bidirectional=True, proj_size=7)
    ref = torch.nn.LSTM(**config, device=device, dtype=dtype)
    ours = rnnfast.LSTM(**config, device=device, dtype=dtype, backend=backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(9, 3, 13, device=device, dtype=dtype, requires_grad=True)
    results = []
    for model in (ref, ours):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 9, 2], enforce_sorted=False)
        out, (h, c) = model(packed)
        loss = out.data.float().square().sum() + h.float().sum() + c.float().sum()
        grads = torch.autograd.grad(loss, [x, *model.parameters()])
        results.append([out.data, h, c, *grads])
    worst = 0.0
    for a, b in zip(*results):
        scale = b.abs().max().item() or 1.0
        worst = max(worst, (a - b).abs().max().item() / scale)
    return worst


def time_fwd_bwd(model, x, repeats: int) -> float:
    """Median seconds of one forward+backward."""
    device = x.device
    times = []
    for i in range(repeats + 2):  # two warm-up runs
        _sync(device)
        start = time.perf_counter()
        out, _ = model(x)
        out.sum().backward()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def check(args) -> int:
    device, dtype = args.device, DTYPES[args.dtype]
    print(f"rnnfast {rnnfast.__version__}, torch {torch.__version__}, device: {_describe_device(device)}")
    print("\nbackends:")
    status = backends.available_backends()
    usable = []
    for name, reason in status.items():
        if reason is None:
            reason = backends.get(name).unsupported_reason(device, dtype)
            if reason is not None:
                reason = f"cannot run this check's tensors: {reason}"
        print(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
        if reason is None:
            usable.append(name)

    tolerance = {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 5e-2)
    print(f"\nparity with torch.nn.LSTM ({args.dtype}, max relative difference over outputs, "
          f"states and gradients; tolerance {tolerance:g}):")
    failed = False
    for name in usable:
        diff = parity(name, device, dtype)
        ok = diff <= tolerance
        failed |= not ok
        print(f"  {name:<10} {diff:.2e}  {'ok' if ok else 'FAILED'}")

    T, B, H = args.seq, args.batch, args.hidden
    print(f"\nforward+backward, T={T} B={B} I=H={H} {args.dtype}, median of {args.repeats}:")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(H, H, device=device, dtype=dtype)
    x = torch.randn(T, B, H, device=device, dtype=dtype, requires_grad=True)
    base = time_fwd_bwd(ref, x, args.repeats)
    print(f"  {'torch.nn.LSTM':<18} {base * 1e3:9.2f} ms   1.00x")
    for name in usable:
        if name == "triton" and device.type == "cpu":
            print(f"  {'rnnfast/triton':<18} not timed: Triton's CPU interpreter is for testing only")
            continue
        t = time_fwd_bwd(rnnfast.LSTM.from_torch(ref, backend=name), x, args.repeats)
        print(f"  {'rnnfast/' + name:<18} {t * 1e3:9.2f} ms   {t / base:.2f}x the time of nn.LSTM")
    print("\n(quick check only: the benchmark suites under bench/ are the evidence for speed claims)")
    return 1 if failed else 0


def main(argv=None) -> int:
    """Runs a command; a mistake on the command line is one line on stderr and exit code 2."""
    try:
        return _main(argv)
    except UsageError as error:
        print(f"{error.prog or 'python -m rnnfast'}: error: {error}", file=sys.stderr)
        return 2


def _main(argv) -> int:
    parser = Parser(prog="python -m rnnfast", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("check", help="backends, parity with nn.LSTM and a quick speed check (default)")
    for target in (parser, p):
        target.add_argument("--device", type=device_arg, default="auto",
                            help="auto (cuda if present, default), cpu, cuda, cuda:1 ...")
        target.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
        target.add_argument("--seq", type=positive_int, default=50)
        target.add_argument("--batch", type=positive_int, default=32)
        target.add_argument("--hidden", type=positive_int, default=256)
        target.add_argument("--repeats", type=positive_int, default=5)
    b = sub.add_parser("bench", help="benchmark suite: every provider in the same run, ratios to "
                       "nn.LSTM, memory, floors; JSON/CSV/plots under bench/results/<device>/")
    from rnnfast.bench import cli as bench_cli
    bench_cli.add_arguments(b)
    d = sub.add_parser("demo", help="transfer learning on real offline data (UCR time series, "
                       "movie-review sentiment on GloVe): accuracy, time and memory against nn.LSTM")
    from rnnfast.demo import cli as demo_cli
    demo_cli.add_arguments(d)
    v = sub.add_parser("verify", help="on a GPU: build, parity, GPU tests, compute-sanitizer and bench "
                       "against cuDNN in one time-boxed run; results under rnnfast-verify/<gpu>/")
    from rnnfast.verify import cli as verify_cli
    verify_cli.add_arguments(v)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_cli.run(args, sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        return demo_cli.run(args, (sys.argv[1:] if argv is None else argv)[1:])
    if args.command == "verify":
        return verify_cli.run(args, sys.argv[1:] if argv is None else argv)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
