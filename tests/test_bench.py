"""benchmarks/bench.py (`make bench`): runs end to end on a toy config and prints well-formed RESULT lines."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import flops_per_target_token  # noqa: E402

from mtcli.config import ModelConfig  # noqa: E402


def fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split()[1:])


def test_transformer_flops_are_the_peer_harness_count():
    # ../shared/bench/flops.py: 46.35 MFLOP per target token for its Transformer at these lengths
    model = ModelConfig(backend="transformer", embed_dim=256, ff_dim=1024, encoder_layers=3, decoder_layers=3)
    assert abs(flops_per_target_token(model, 8001, 16.21, 15.66) / 1e6 - 46.35) < 0.005
    rnn = ModelConfig(backend="attention", embed_dim=256, hidden_dim=256, encoder_layers=1, decoder_layers=1)
    assert 0 < flops_per_target_token(rnn, 8000, 16.0, 16.0) < flops_per_target_token(model, 8000, 16.0, 16.0)


def test_quick_bench_prints_train_decode_and_peak_results():
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--config",
                          "experiments/toy-transformer.yaml"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    results = [fields(line) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert all(r["tool"] == "mtcli" for r in results)
    peak = [r for r in results if r["kind"] == "matmul_peak"]
    assert len(peak) == 1 and float(peak[0]["fp32_gflops"]) > 0 and float(peak[0]["bf16_gflops"]) > 0
    train = {r["precision"]: r for r in results if r["kind"] == "transformer"}
    assert set(train) == {"fp32", "bf16"}
    for r in train.values():
        assert float(r["train_tok_s"]) > 0 and float(r["peak_rss_mb"]) > 100 and 0 < float(r["mfu"]) < 1.5
    decode = {(r["precision"], r["search"]): r for r in results if r["kind"] == "transformer-decode"}
    assert set(decode) == {(p, s) for p in ("fp32", "bf16") for s in ("greedy", "beam5")}
    for (_, name), r in decode.items():
        assert r["mode"] == "fixed" and r["mean_out_len"] == "30.0"  # every output exactly 30 pieces
        ratio = float(r[f"{name}_out_tok_s"]) / float(r[f"{name}_sent_s"])  # both rounded to 0.1
        assert 27 < ratio < 33


def test_bench_names_a_missing_config_in_one_line():
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--config", "experiments/nope.yaml"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and out.stderr.strip() == "experiments/nope.yaml: no such config"
