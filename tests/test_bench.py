"""benchmarks/bench.py (`make bench`): runs end to end on a toy config and prints well-formed RESULT lines."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pytest  # noqa: E402
import torch  # noqa: E402
from bench import flops_per_target_token  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mtcli.config import ModelConfig  # noqa: E402
from mtcli.models import build_model  # noqa: E402


def fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split()[1:])


def counted_flops(cfg: ModelConfig, vocab: int, src_len: int, tgt_len: int) -> tuple[int, dict]:
    """Matrix-product FLOPs of one forward pass as torch's FlopCounterMode counts them, per module."""
    model = build_model(cfg, vocab, vocab).eval()
    src, tgt = torch.randint(4, vocab, (1, src_len)), torch.randint(4, vocab, (1, tgt_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(src, torch.ones(1, src_len, dtype=torch.bool), tgt)
    return counter.get_total_flops(), counter.get_flop_counts()


@pytest.mark.parametrize("cfg", [
    ModelConfig(backend="transformer", embed_dim=64, ff_dim=128, heads=2, encoder_layers=2, decoder_layers=1),
    ModelConfig(backend="attention", embed_dim=32, hidden_dim=64, encoder_layers=2, decoder_layers=1),
    ModelConfig(backend="attention", embed_dim=32, hidden_dim=64, attention="dot")], ids=str)
def test_model_flops_equal_torchs_count_of_the_forward_pass(cfg):
    """bench.py's FLOPs per target token x target length / 3 is the forward pass's matrix products: what
    FlopCounterMode counts, plus the attention products of the fused kernel it does not see (Transformer),
    less the bridge that runs once per sentence (RNN)."""
    vocab, src_len, tgt_len = 100, 12, 9
    total, by_module = counted_flops(cfg, vocab, src_len, tgt_len)
    d = cfg.embed_dim
    if cfg.backend == "transformer":  # QK^T and weights x V: 2 products of 2 x queries x keys x d FLOPs
        total += 2 * 2 * d * (src_len * src_len * cfg.encoder_layers
                              + (tgt_len * tgt_len + tgt_len * src_len) * cfg.decoder_layers)
    else:
        total -= sum(by_module[f"{type(build_model(cfg, vocab, vocab)).__name__}.bridge"].values())
    assert flops_per_target_token(cfg, vocab, src_len, tgt_len) * tgt_len / 3 == total


def test_quick_bench_prints_train_decode_and_peak_results():
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--config",
                          "experiments/toy-transformer.yaml"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    results = [fields(line) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    # the output's shape, not its speed: one line per measurement, with the fields the peers' lines have
    assert all(r["tool"] == "mtcli" for r in results)
    peak = [r for r in results if r["kind"] == "matmul_peak"]
    assert len(peak) == 1 and {"fp32_gflops", "bf16_gflops", "threads"} <= peak[0].keys()
    train = {r["precision"]: r for r in results if r["kind"] == "transformer"}
    assert set(train) == {"fp32", "bf16"}
    for r in train.values():
        assert {"train_tok_s", "peak_rss_mb", "mfu", "mflop_per_tok", "params"} <= r.keys()
        assert r["params"] == "955264" and r["steps"] == "3" and len(r["runs"].split(",")) == 1
    decode = {(r["precision"], r["search"]): r for r in results if r["kind"] == "transformer-decode"}
    assert set(decode) == {(p, s) for p in ("fp32", "bf16") for s in ("greedy", "beam5")}
    for (_, name), r in decode.items():
        assert r["mode"] == "fixed" and r["mean_out_len"] == "30.0"  # every output exactly 30 pieces
        assert r["sents"] == "8" and {f"{name}_sent_s", f"{name}_out_tok_s"} <= r.keys()


def test_bench_names_a_missing_config_in_one_line():
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--config", "experiments/nope.yaml"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and out.stderr.strip() == "experiments/nope.yaml: no such config"
