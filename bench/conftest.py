"""pytest-benchmark glue: every case is timed for torch.nn.LSTM and rnnfast variants in
the same run (the test parameter `provider`), and the summary reports each variant's
time as a ratio to nn.LSTM's (median over rounds). The ratios are also written into
the --benchmark-json file under "ratios" as {group: {provider: ratio}}."""
import platform

import torch


def _ratios(benchmarks):
    by_group = {}
    for bench in benchmarks:
        if not isinstance(bench, dict):  # a live Metadata object rather than its JSON
            bench = {"group": bench.group, "params": bench.params,
                     "stats": {"median": bench.stats.median}}
        provider = bench["params"]["provider"]
        by_group.setdefault(bench["group"], {})[provider] = bench["stats"]["median"]
    return {group: {p: t / times["torch"] for p, t in times.items() if p != "torch"}
            for group, times in by_group.items() if "torch" in times}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["ratios"] = _ratios(output_json["benchmarks"])
    output_json["environment"] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "command": " ".join(["python -m pytest", *config.invocation_params.args]),
    }


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if not session or not session.benchmarks:
        return
    terminalreporter.section("rnnfast / torch.nn.LSTM (median time ratio, same run)")
    for group, ratios in sorted(_ratios(session.benchmarks).items()):
        for provider, ratio in ratios.items():
            terminalreporter.write_line(f"{group:<48} {provider:<18} {ratio:.3f}")
