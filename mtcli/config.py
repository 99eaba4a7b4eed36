"""Experiment configuration: YAML -> frozen, typed dataclasses.

Every user mistake becomes one ConfigError line naming the file, the key path and the fix.
This module knows nothing of data, models or the terminal: the names it accepts for backends (and their own
keys), strategies and metrics it reads, when a config is checked, from the dicts that define them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml

from mtcli.errors import ConfigError


class Choice:
    """`Annotated[str, Choice(table)]`: one of the keys of a dict kept with the code they name (backends,
    attention scores, strategies, metrics), so that dict is the one place that lists them. `table` is the
    dict, or "module:NAME" for one in a module that imports this one (read when a value is checked)."""

    def __init__(self, table: Mapping[str, Any] | str, *extra: str):
        self.table, self.extra = table, extra

    def names(self) -> tuple[str, ...]:
        table = self.table
        if isinstance(table, str):
            module, _, name = table.partition(":")
            table = getattr(importlib.import_module(module), name)
        return (*table, *self.extra)


@dataclass(frozen=True)
class ToyConfig:
    """The built-in toy language pair (used when data.dir is null)."""

    seed: int = 1
    train_size: int = 20000
    dev_size: int = 500
    test_size: int = 1000
    min_len: int = 3
    max_len: int = 40


@dataclass(frozen=True)
class CorpusConfig:
    """One training corpus among several (data.train as a list), mixed by weight each epoch."""

    name: str  # file stem under data.dir, or a .tsv file, as data.train
    weight: float = 1.0  # pairs per epoch = weight x the corpus's pairs (2: each twice; 0.5: a seeded half)


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = None
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    train: str | tuple[CorpusConfig, ...] = "train"
    dev: str = "val"
    test: str = "test"
    tokenizer: Literal["whitespace", "sentencepiece"] = "whitespace"
    spm_type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = 8000
    joint_vocab: bool = True
    max_len: int = 100
    spm_sample: int = 1_000_000
    spm_alpha: float = 0.0
    spm_nbest: int = 64
    cache_dir: str | None = None
    toy: ToyConfig = field(default_factory=ToyConfig)

    @property
    def corpora(self) -> tuple[CorpusConfig, ...]:
        """The training corpora, one for a plain data.train."""
        return (CorpusConfig(self.train),) if isinstance(self.train, str) else self.train


@dataclass(frozen=True)
class BackendOptions:
    """A backend's own model keys (its `Options`, declared with its code in mtcli/models/): a frozen dataclass
    of typed keys with defaults, written flat in the model section beside the keys every backend has."""

    positive: ClassVar[tuple[str, ...]] = ()  # keys that must be above zero

    def check(self, model: ModelConfig, fail: Callable[[str, str], typing.NoReturn]) -> None:
        """The checks that need a range or another key; `fail("model.KEY", message)` reports a mistake."""
        for name in self.positive:
            if getattr(self, name) <= 0:
                fail(f"model.{name}", f"must be positive, got {getattr(self, name)}")


def backend_options(backend: str) -> type[BackendOptions]:
    from mtcli.models import BACKENDS  # the models import this module: the dict is read when it is needed

    return BACKENDS[backend].Options


def _option_types(options: type[BackendOptions]) -> dict[str, Any]:
    hints = typing.get_type_hints(options, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(options)}


@dataclass(frozen=True, init=False)
class ModelConfig:
    """The keys every backend has, and in `options` the backend's own, read as if they were here too
    (cfg.heads, cfg.rnn_type): built as a YAML model section is written, flat,
    ModelConfig(backend="attention", hidden_dim=64). The other backends' keys are accepted and left out
    (reference.yaml and stored configs list them all)."""

    backend: Annotated[str, Choice("mtcli.models:BACKENDS")] = "transformer"
    embed_dim: int = 256
    encoder_layers: int = 2
    decoder_layers: int = 2
    dropout: float = 0.1
    tie_embeddings: Literal["none", "decoder", "all"] = "none"
    options: BackendOptions = None  # the backend's Options; None: from the keys given

    def __init__(self, **keys: Any):
        common = {f.name: keys.pop(f.name, f.default) for f in dataclasses.fields(self)}
        own = backend_options(common["backend"])
        names = {f.name for f in dataclasses.fields(own)}
        options = common.pop("options") or own(**{k: keys.pop(k) for k in list(keys) if k in names})
        if not isinstance(options, own) or set(keys) & names:
            raise TypeError(f"ModelConfig: options for the {common['backend']} backend are {own.__name__}")
        unknown = set(keys) - set(model_key_types(None))
        if unknown:
            raise TypeError(f"ModelConfig: unknown keys {', '.join(sorted(unknown))}")
        for name, value in {**common, "options": options}.items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is None or name.startswith("__") or name not in {f.name for f in dataclasses.fields(options)}:
            raise AttributeError(f"model.{name}: not a key of the {self.__dict__.get('backend')} backend")
        return getattr(options, name)


def model_key_types(backend: str | None) -> dict[str, Any]:
    """Every key a model section may hold -> its type: the common keys, the backend's own (None: any
    backend's), then the other backends' keys, checked by the type their first backend gives them."""
    from mtcli.models import BACKENDS

    hints = typing.get_type_hints(ModelConfig, include_extras=True)
    found = {f.name: hints[f.name] for f in dataclasses.fields(ModelConfig) if f.name != "options"}
    chosen = [BACKENDS[backend]] if isinstance(backend, str) and backend in BACKENDS else []
    for cls in chosen + list(BACKENDS.values()):
        for name, tp in _option_types(cls.Options).items():
            found.setdefault(name, tp)
    return found


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1
    init_from: str | None = None
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    threads: int = 0
    batch_tokens: int = 4096
    accumulate: int = 1
    max_epochs: int = 20
    max_steps: int = 0
    max_minutes: float = 0.0
    optimizer: str = "adam"  # a name in mtcli.optim.OPTIMIZERS
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.98
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_all: bool = False
    scheduler: str = "inverse_sqrt"  # a name in mtcli.optim.SCHEDULES
    warmup_steps: int = 1000
    decay_steps: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 1.0e-6
    ema_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_grad_norm: float = 1.0
    log_every: int = 50
    validate_every: int = 500
    valid_beam_size: int = 1
    samples: int = 3
    best_metric: Annotated[str, Choice("mtcli.metrics:METRICS", "loss")] = "bleu"
    patience: int = 0
    keep_last: int = 3
    keep_best: int = 1


MAX_WIDTH = 256  # most hypotheses per sentence (beam size, n-best, samples): beam search rarely gains past 10


@dataclass(frozen=True)
class DecodeConfig:
    """A decode request: how tokens are chosen (search/mtcli.search) and what may be chosen."""

    strategy: Annotated[str, Choice("mtcli.search:STRATEGIES")] = "beam"
    beam_size: int = 5
    n_best: int = 1
    length_penalty: float = 0.6
    max_len: int = 200
    max_len_ratio: float = 2.0
    min_len: int = 0
    no_repeat_ngram_size: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1
    batch_size: int = 64
    memory_mb: int = 1024
    precision: Literal["fp32", "bf16"] = "fp32"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    run_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


# ---------------------------------------------------------------- building from plain data


def _fail(source: str, path: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{source}: {path}: {message}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) is Annotated:
        return "one of " + ", ".join(_choices(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ')}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _same_shape(value: Any, tp: Any) -> bool:
    """A YAML list given for a list type, or a mapping for a section."""
    return (isinstance(value, list) and typing.get_origin(tp) is tuple) or (
        isinstance(value, dict) and dataclasses.is_dataclass(tp))


def _choices(tp: Any) -> tuple[str, ...]:
    """The names an `Annotated[str, Choice(...)]` accepts."""
    return next(extra for extra in tp.__metadata__ if isinstance(extra, Choice)).names()


def _convert(value: Any, tp: Any, source: str, path: str) -> Any:
    """Check `value` (parsed YAML) against the annotation `tp`; return the typed value."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        value = _convert(value, typing.get_args(tp)[0], source, path)
        if value not in _choices(tp):
            _fail(source, path, f"{value!r} is not one of {', '.join(_choices(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:  # a section with every key commented out
            value = {}
        if not isinstance(value, dict):
            _fail(source, path, f"expected a mapping of keys, got {value!r}")
        return _build(tp, value, source, path)
    if origin is tuple:  # tuple[X, ...]: a YAML list
        if not isinstance(value, list) or not value:
            _fail(source, path, f"expected {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, source, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            _fail(source, path, f"{value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, source, path)
            except ConfigError:
                if _same_shape(value, option):  # the option the user meant: its own message is the useful one
                    raise
        _fail(source, path, f"expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            _fail(source, path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(source, path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; every user writes it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(source, path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(source, path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r}")  # a bug in this module, not the user's


def _key_types(cls: type, data: dict) -> dict[str, Any]:
    """The keys a section of type `cls` may hold -> their types; `data`: the section as given so far."""
    if cls is ModelConfig:
        return model_key_types(data.get("backend", ModelConfig.backend))
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(names: list[str], key: str, source: str, path: str) -> typing.NoReturn:
    near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'?" if near else "known keys: " + ", ".join(names)
    _fail(source, f"{path}.{key}" if path else str(key), f"unknown key ({hint})")


def _build(cls: type, data: dict, source: str, path: str = "") -> Any:
    if cls is ModelConfig and "backend" in data:  # the backend first: it decides which keys are its own
        data = {"backend": data["backend"], **data}
        data["backend"] = _convert(data["backend"], _key_types(cls, {})["backend"], source, f"{path}.backend")
    known = _key_types(cls, data)
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            _unknown_key(list(known), key, source, path)
        kwargs[key] = _convert(value, known[key], source, f"{path}.{key}" if path else key)
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(source, f"{path}.{f.name}" if path else f.name, "missing (this key has no default)")
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: Any, source: str) -> None:
    """Put `value` at `a.b.c` in the nested dict, checking each key and the value's type against the schema."""
    cls: Any = ExperimentConfig
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys):
        path = ".".join(keys[:depth])
        if not dataclasses.is_dataclass(cls):
            _fail(source, path, f"is a value, not a section (cannot set '{dotted}')")
        known = _key_types(cls, node if isinstance(node, dict) else {})
        if key not in known:
            _unknown_key(list(known), key, source, path)
        cls = known[key]
        if depth == len(keys) - 1:
            _convert(value, cls, source, dotted)  # a wrong type is the override's mistake, not the file's
            node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                _fail(source, ".".join(keys[: depth + 1]), "expected a mapping of keys")


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=0.001` -> ("train.lr", 0.001); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _validate(cfg: ExperimentConfig, source: str, overridden: tuple[str, ...] = ()) -> None:
    """Checks that involve more than one key or a range; a key set by --set is blamed on --set."""

    def fail(key: str, message: str) -> typing.NoReturn:
        by_override = any(key == k or key.startswith(k + ".") for k in overridden)
        _fail("--set" if by_override else source, key, message)

    positive = {
        "model.embed_dim": cfg.model.embed_dim,
        "model.encoder_layers": cfg.model.encoder_layers, "model.decoder_layers": cfg.model.decoder_layers,
        "data.vocab_size": cfg.data.vocab_size, "data.max_len": cfg.data.max_len,
        "train.batch_tokens": cfg.train.batch_tokens, "train.lr": cfg.train.lr,
        "train.log_every": cfg.train.log_every, "train.validate_every": cfg.train.validate_every,
        "train.valid_beam_size": cfg.train.valid_beam_size, "train.accumulate": cfg.train.accumulate,
        "train.keep_last": cfg.train.keep_last, "train.keep_best": cfg.train.keep_best,
        "decode.beam_size": cfg.decode.beam_size,
        "decode.max_len": cfg.decode.max_len, "decode.batch_size": cfg.decode.batch_size,
        "data.toy.train_size": cfg.data.toy.train_size, "data.toy.dev_size": cfg.data.toy.dev_size,
        "data.toy.test_size": cfg.data.toy.test_size, "data.toy.min_len": cfg.data.toy.min_len,
    }
    for key, value in positive.items():
        if value <= 0:
            fail(key, f"must be positive, got {value}")
    for key, value in {"train.max_epochs": cfg.train.max_epochs, "train.max_steps": cfg.train.max_steps,
                       "train.max_minutes": cfg.train.max_minutes, "train.warmup_steps": cfg.train.warmup_steps,
                       "train.patience": cfg.train.patience, "train.samples": cfg.train.samples,
                       "train.clip_grad_norm": cfg.train.clip_grad_norm, "train.threads": cfg.train.threads,
                       "train.weight_decay": cfg.train.weight_decay, "decode.min_len": cfg.decode.min_len}.items():
        if value < 0:
            fail(key, f"must be zero or positive, got {value}")
    if not 0 <= cfg.model.dropout < 1:
        fail("model.dropout", f"must be in [0, 1), got {cfg.model.dropout}")
    if not 0 <= cfg.train.label_smoothing < 1:
        fail("train.label_smoothing", f"must be in [0, 1), got {cfg.train.label_smoothing}")
    if cfg.train.max_epochs == 0 and cfg.train.max_steps == 0 and cfg.train.max_minutes == 0:
        fail("train.max_epochs", "set max_epochs, max_steps or max_minutes, or training never stops")
    cfg.model.options.check(cfg.model, fail)
    if cfg.model.tie_embeddings == "all" and not cfg.data.joint_vocab:
        fail("model.tie_embeddings", "'all' needs data.joint_vocab: true (one vocabulary for both sides)")
    for i, corpus in enumerate(cfg.data.corpora):
        if not corpus.weight > 0:
            _fail(source, f"data.train[{i}].weight", f"must be positive, got {corpus.weight}")
    names = [corpus.name for corpus in cfg.data.corpora]
    if len(set(names)) < len(names):
        _fail(source, "data.train", "names a corpus twice; give it one entry with a larger weight")
    if cfg.data.spm_sample < 0:
        _fail(source, "data.spm_sample", f"must be zero (all sentences) or positive, got {cfg.data.spm_sample}")
    if cfg.data.toy.max_len < cfg.data.toy.min_len:
        fail("data.toy.max_len", f"must be at least data.toy.min_len ({cfg.data.toy.min_len})")
    if cfg.train.device not in ("auto", "cpu", "cuda") and not cfg.train.device.startswith("cuda:"):
        fail("train.device", f"{cfg.train.device!r} is not one of auto, cpu, cuda, cuda:N")
    if cfg.train.valid_beam_size > MAX_WIDTH:
        fail("train.valid_beam_size", f"{cfg.train.valid_beam_size} is more than {MAX_WIDTH}, the most "
             "hypotheses mtcli searches with")
    check_decode(cfg.decode, fail)
    _check_updates(cfg.train, fail)
    _check_sampling(cfg.data, fail)


def check_decode(decode: DecodeConfig, fail: Callable[[str, str], typing.NoReturn]) -> None:
    """The decode section's ranges, and the keys that must agree (n-best within the beam); `fail(key,
    message)` reports a mistake."""
    for key in ("beam_size", "n_best"):
        value = getattr(decode, key)
        if not 1 <= value <= MAX_WIDTH:
            fail(f"decode.{key}", f"{value} is outside 1..{MAX_WIDTH} (the most hypotheses per sentence "
                 "mtcli searches with; beam search rarely gains past 10)")
    if decode.strategy == "beam" and decode.n_best > decode.beam_size:
        fail("decode.n_best", f"{decode.n_best} is more than decode.beam_size ({decode.beam_size}): "
             "beam search finds at most beam_size hypotheses")
    if decode.strategy == "greedy" and decode.n_best > 1:
        fail("decode.n_best", f"{decode.n_best}: greedy search finds one hypothesis (use beam search "
             "or sampling for more)")
    for key, value in {"length_penalty": decode.length_penalty, "temperature": decode.temperature,
                       "top_p": decode.top_p, "max_len_ratio": decode.max_len_ratio}.items():
        if not math.isfinite(value):
            fail(f"decode.{key}", f"must be a finite number, got {value}")
    if decode.temperature <= 0:
        fail("decode.temperature", f"must be positive, got {decode.temperature}")
    if not 0 < decode.top_p <= 1:
        fail("decode.top_p", f"must be in (0, 1], got {decode.top_p}")
    for key in ("max_len", "batch_size", "memory_mb"):
        if getattr(decode, key) <= 0:
            fail(f"decode.{key}", f"must be positive, got {getattr(decode, key)}")
    if decode.max_len_ratio <= 0:
        fail("decode.max_len_ratio", f"must be positive, got {decode.max_len_ratio}")
    for key in ("min_len", "top_k", "no_repeat_ngram_size"):
        if getattr(decode, key) < 0:
            fail(f"decode.{key}", f"must be zero or positive, got {getattr(decode, key)}")


def decode_with(decode: DecodeConfig, values: dict[str, Any], source: str) -> DecodeConfig:
    """`decode` with the keys of `values` replaced, typed and checked as in a config file."""
    data = dataclasses.asdict(decode)
    for key, value in values.items():
        if key not in data:
            _unknown_key(list(data), key, source, "decode")
        data[key] = value
    result = _build(DecodeConfig, data, source, "decode")
    check_decode(result, lambda key, message: _fail(source, key, message))
    return result


def decode_overrides(texts: list[str]) -> dict[str, Any]:
    """`--set decode.key=value` strings -> {key: value}; other sections do not apply to decoding."""
    values = {}
    for text in texts:
        key, value = parse_override(text)
        section, _, name = key.partition(".")
        if section != "decode" or not name or "." in name:
            raise ConfigError(f"--set {text}: only decode.KEY=VALUE applies when decoding "
                              "(the rest of the config is the checkpoint's)")
        values[name] = value
    return values


def _check_updates(train: TrainConfig, fail: Callable[[str, str], typing.NoReturn]) -> None:
    """The optimizer and schedule by name (the keys of mtcli.optim's dicts), their options, the EMA."""
    from mtcli.optim import OPTIMIZERS, SCHEDULES  # the registries decide the names; torch is loaded there

    for key, name, known in (("train.optimizer", train.optimizer, OPTIMIZERS),
                             ("train.scheduler", train.scheduler, SCHEDULES)):
        if name not in known:
            fail(key, f"{name!r} is not one of {', '.join(known)}")
    if train.momentum < 0:
        fail("train.momentum", f"must be zero or positive, got {train.momentum}")
    if train.nesterov and not (train.optimizer == "sgd" and train.momentum > 0):
        fail("train.nesterov", "needs train.optimizer: sgd and a positive train.momentum")
    if train.decay_steps < 0:
        fail("train.decay_steps", f"must be zero or positive, got {train.decay_steps}")
    if train.scheduler == "cosine" and not (train.decay_steps or train.max_steps or train.max_epochs):
        fail("train.decay_steps", "cosine needs an end: set train.decay_steps, max_steps or max_epochs")
    if not 0 <= train.ema_decay < 1:
        fail("train.ema_decay", f"must be in [0, 1) (0 = no average), got {train.ema_decay}")


def _check_sampling(data: DataConfig, fail: Callable[[str, str], typing.NoReturn]) -> None:
    """Subword sampling: sentencepiece only; BPE-dropout's alpha is a probability; unigram draws from N > 1."""
    if data.spm_alpha < 0:
        fail("data.spm_alpha", f"must be zero (no sampling) or positive, got {data.spm_alpha}")
    if not data.spm_alpha:
        return
    if data.tokenizer != "sentencepiece":
        fail("data.spm_alpha", "subword sampling needs data.tokenizer: sentencepiece")
    if data.spm_type == "bpe" and data.spm_alpha >= 1:
        fail("data.spm_alpha", f"BPE-dropout drops each merge with this probability: must be below 1, "
                               f"got {data.spm_alpha}")
    if data.spm_type == "unigram" and data.spm_nbest < 2:
        fail("data.spm_nbest", f"unigram sampling draws from the N best segmentations: must be at least 2, "
                               f"got {data.spm_nbest}")


def config_from_dict(data: dict, source: str, overrides: list[str] = ()) -> ExperimentConfig:
    """Build a checked config from plain data plus `section.key=value` overrides."""
    tree, overridden = copy.deepcopy(data), []
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value, "--set")
        overridden.append(key)
    cfg = _build(ExperimentConfig, tree, source)
    _validate(cfg, source, tuple(overridden))
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment; `name` defaults to the file's stem."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        stored = path / "config.yaml"
        hint = f" (a run folder? its resolved config is {stored})" if stored.is_file() else ""
        raise ConfigError(f"{source}: is a folder, not a config file{hint}")
    if not path.is_file():
        raise ConfigError(f"{source}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: {where}{problem}") from None
    if data is None or data == {}:
        raise ConfigError(f"{source}: the file is empty: write the settings that differ from the defaults "
                          "(experiments/reference.yaml lists them all)")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, train, decode)")
    data.setdefault("name", path.stem)
    return config_from_dict(data, source, overrides)


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """Plain data (lists, not tuples) for YAML, JSON and checkpoints; the model section flat, as written."""
    data = dataclasses.asdict(cfg, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in items})
    data["model"].update(data["model"].pop("options"))
    return data


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
