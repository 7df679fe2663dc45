"""Experiment configs: YAML read safely (modelcut/config_yaml.py: duplicate keys are errors)
and validated by strict pydantic models; the cluster section by partition's one cluster
validator (partition/cluster_spec.py), which this schema calls in its place.

Every problem becomes one line `FILE: key.path: expected ..., got ...`; all of them are raised
together as a ConfigError. Unknown keys are errors (with a did-you-mean suggestion), so a
misspelt section never falls back to its defaults. Quantities accept units (`16GB`, `25GB/s`,
`19.5 TFLOPS`, `10us`). Relative paths (`model.graph`, `cluster.file`) are relative to the
config file's folder, not to the working directory; an error names the path they resolve to.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag,
                      ValidationError, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from autodiff.errors import ModelcutError, show_value as _show
from modelcut.config_yaml import YamlFileError, read_yaml
from modelcut.config_rules import (_did_you_mean, _expected, _is_int, _choice, PositiveInt,
                                   NonNegativeInt, Seed, SEED_MAX, Bounded, PositiveNumber,
                                   NonNegativeNumber, Fraction, Flag, Text, Seconds, Dtype,
                                   PinTarget, Betas)

__all__ = ["ConfigError", "Config", "load_config", "validate_config"]


class ConfigError(ModelcutError, ValueError):
    """A config breaks the schema; `problems` holds one `FILE: key.path: ...` line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------- base section
class Section(BaseModel):
    """Strict, frozen, no extra keys; unknown keys get a did-you-mean suggestion and
    `problems()` adds cross-field checks, all reported together with the field errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="wrap")
    @classmethod
    def _validate_section(cls, data, handler):
        if not isinstance(data, dict):
            return handler(data)
        known = set(cls.model_fields)
        errors = []
        for key in data:
            if key not in known:
                hint = (_did_you_mean(key, cls.model_fields)
                        or f" (expected one of {', '.join(cls.model_fields)})")
                errors.append(InitErrorDetails(type=PydanticCustomError(
                    "unknown_key", f"unknown key{hint}"), loc=(key,), input=data[key]))
        try:
            section = handler({k: v for k, v in data.items() if k in known})
        except ValidationError as exc:
            if not errors:
                raise
            errors += [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]),
                                        loc=e["loc"], input=e.get("input"))
                       for e in exc.errors()]     # in the form from_exception_data accepts
            raise ValidationError.from_exception_data(cls.__name__, errors) from None
        errors += [InitErrorDetails(type=_expected(phrase), loc=(key,), input=value)
                   for key, phrase, value in section.problems()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return section

    def problems(self) -> list[tuple[str, str, Any]]:
        """Cross-field problems as (key, 'expected ...', value)."""
        return []


# ----------------------------------------------------------------------- model
# Caps on builder sizes, so that a config cannot ask for a graph no machine could build (a
# layer count of 2^63 would never finish). Tensors are bounded again once the graph is built
# (autodiff.io.check_graph_bounds): at most 2^48 elements each, 2^60 bytes in all.
MAX_LAYERS = 1024            # mlp hidden layers, gpt blocks, lstm layers
MAX_SIZE = 2**20             # width, in_features, classes, d_model, heads, hidden, seq, batch
MAX_VOCAB = 2**24
MAX_UNROLLED_STEPS = 2**16   # lstm layers x seq (each step of each layer is ~15 nodes)
MAX_BLOCKS = 256             # resnet blocks per stage (at most 64 stages)
MAX_IMAGE = 2**15
Layers = Bounded(1, MAX_LAYERS, "a positive integer")
ModelSize = Bounded(1, MAX_SIZE, "a positive integer")
Vocab = Bounded(1, MAX_VOCAB, "a positive integer")


class GraphModel(Section):
    """A graph file: modelcut.graph JSON (`.json`, `.json.gz`) or ONNX (`.onnx`)."""
    graph: Text
    dims: Optional[dict[str, ModelSize]] = None   # ONNX symbolic dimensions, e.g. {batch: 8}
    loss: _choice("cross_entropy", "mse", "sum") = "cross_entropy"   # training an ONNX model
    data: _choice("fixed", "fresh") = "fixed"


class MLPModel(Section):
    builder: Literal["mlp"]
    layers: Layers = 2
    width: ModelSize
    in_features: ModelSize = 64
    classes: ModelSize = 10
    batch: ModelSize
    activation: _choice("relu", "gelu", "tanh", "sigmoid") = "relu"
    dtype: Dtype = "float32"


class GPTModel(Section):
    builder: Literal["gpt"]
    layers: Layers
    d_model: ModelSize
    heads: ModelSize
    seq: ModelSize
    vocab: Vocab
    batch: ModelSize
    tied: Flag = True
    dtype: Dtype = "float32"

    def problems(self):
        if self.d_model % self.heads:
            return [("heads", f"expected a divisor of d_model ({self.d_model})", self.heads)]
        return []


class LSTMModel(Section):
    builder: Literal["lstm"]
    layers: Layers = 1
    hidden: ModelSize
    vocab: Vocab
    seq: ModelSize
    batch: ModelSize
    skip: Flag = True
    dtype: Dtype = "float32"

    def problems(self):
        if self.layers * self.seq > MAX_UNROLLED_STEPS:
            return [("seq", f"expected layers x seq at most {MAX_UNROLLED_STEPS:,} (the graph "
                            f"unrolls every step; layers is {self.layers})", self.seq)]
        return []


class ResNetModel(Section):
    builder: Literal["resnet"]
    channels: Annotated[list[ModelSize], Field(min_length=1, max_length=64)]
    blocks: Bounded(1, MAX_BLOCKS, "a positive integer") = 1
    image: Bounded(1, MAX_IMAGE, "a positive integer") = 16
    in_channels: ModelSize = 3
    classes: ModelSize = 10
    batch: ModelSize
    dtype: Dtype = "float32"


class TorchModel(Section):
    """`torch: "package.module:factory"`, imported through torch.export (imported_model.py);
    `data: fixed` trains on one seeded batch, `fresh` draws a new one each step."""
    torch: Text
    loss: _choice("cross_entropy", "mse", "sum") = "cross_entropy"
    data: _choice("fixed", "fresh") = "fixed"
    folder: Optional[Text] = None

    def problems(self):
        module, _, factory = self.torch.partition(":")
        if not (factory.isidentifier() and all(p.isidentifier() for p in module.split("."))):
            return [("torch", "expected \"package.module:factory\"", self.torch)]
        return []


BUILDER_MODELS = {"mlp": MLPModel, "gpt": GPTModel, "lstm": LSTMModel, "resnet": ResNetModel}


def _model_kind(data) -> str | None:
    if isinstance(data, BaseModel):      # a validated section: its fields tell its kind
        data = dict(data)
    if not isinstance(data, dict):
        return None
    return "graph" if "graph" in data else "torch" if "torch" in data else data.get("builder")


ModelSection = Annotated[Union[Annotated[GraphModel, Tag("graph")],
                               Annotated[TorchModel, Tag("torch")],
                               *(Annotated[m, Tag(k)] for k, m in BUILDER_MODELS.items())],
                         Discriminator(_model_kind)]


# --------------------------------------------------------------------- cluster
def _cluster_section(value):
    """`file: PATH` (read by load_config), else a cluster section normalized by partition's
    one cluster validator (partition/cluster_spec.py)."""
    from partition.cluster_spec import normalize
    from partition.errors import ClusterError
    if isinstance(value, dict) and "file" in value:
        for key in value:
            if key != "file":
                raise _cluster_problem(f"cluster.{_key(key)}: unknown key (expected file alone)")
        if not isinstance(value["file"], str) or not value["file"]:
            raise _cluster_problem(f"cluster.file: expected a non-empty string, got "
                                   f"{_show(value['file'])}")
        return dict(value)
    try:
        return normalize(value)
    except ClusterError as exc:
        raise _cluster_problem(str(exc)) from None


def _cluster_problem(text: str) -> PydanticCustomError:
    """A cluster problem whose text already names its key path (`cluster.x: ...`)."""
    return PydanticCustomError("cluster", "{text}", {"text": text})


ClusterSection = Annotated[dict, BeforeValidator(_cluster_section)]


# ------------------------------------------------------------ partition, training
def _known_algorithms() -> list[str]:
    """Names in partition.algorithms.ALGORITHMS, plus auto."""
    from partition.algorithms import ALGORITHMS
    return sorted(set(ALGORITHMS) | {"auto"})


def _shard_choice(value):
    """partition.shard: "auto" or "off" (YAML's bare off/false and on/true accepted)."""
    if value is False or value is True:
        return "auto" if value else "off"
    if value in ("auto", "off"):
        return value
    raise PydanticCustomError("expected", "expected one of auto, off")


class PartitionSection(Section):
    algorithm: Text = "auto"
    epsilon: NonNegativeNumber = 0.10
    acyclic: Flag = False
    seed: Optional[Seed] = None
    time_limit: Optional[Seconds] = None
    # "time" is the old name of "time_volume" (the time-weighted volume), still accepted
    objective: Optional[_choice("volume", "time_volume", "time", "throughput")] = None
    pin: dict[str, PinTarget] = {}
    # operator sharding (partition/sharding.py); YAML reads a bare off/on as false/true
    shard: Annotated[str, BeforeValidator(_shard_choice)] = "off"

    def problems(self):
        known = _known_algorithms()
        if self.algorithm in known:
            return []
        return [("algorithm", f"expected one of {', '.join(known)}"
                              f"{_did_you_mean(self.algorithm, known)}", self.algorithm)]


class TrainingSection(Section):
    steps: PositiveInt = 100
    optimizer: _choice("sgd", "momentum", "adam") = "sgd"
    lr: PositiveNumber = 0.01
    momentum: Fraction = 0.9
    weight_decay: NonNegativeNumber = 0.0
    betas: Betas = (0.9, 0.999)
    micro_batches: PositiveInt = 1
    schedule: _choice("gpipe", "1f1b", "sequential") = "sequential"
    defer_weight_grads: Flag = False
    seed: Optional[Seed] = None
    checkpoint_every: NonNegativeInt = 0
    dtype: Optional[Dtype] = None     # None: the model's dtype
    step_timeout: Optional[Seconds] = None    # None: from the predicted step time (train)
    on_nan: _choice("stop", "skip") = "stop"
    max_recoveries: NonNegativeInt = 3


# ------------------------------------------------------------------------ config
class Config(Section):
    """One experiment: a model, a cluster, how to partition it and how to train it."""

    name: Optional[Text] = None
    seed: Seed = 0
    model: ModelSection
    cluster: ClusterSection = {"uniform": {"devices": 2}}
    partition: PartitionSection = PartitionSection()
    training: TrainingSection = TrainingSection()

    @model_validator(mode="before")
    @classmethod
    def _section_seeds(cls, data):
        """Sections without their own seed take the top-level one."""
        seed = data.get("seed", 0) if isinstance(data, dict) else None
        if _is_int(seed) and 0 <= seed <= SEED_MAX:   # else only the top-level seed is wrong
            data = dict(data)
            for key in ("partition", "training"):
                section = data.get(key, {})
                if isinstance(section, dict) and "seed" not in section:
                    data[key] = {**section, "seed": data.get("seed", 0)}
        return data

    def model_kwargs(self) -> tuple[str, dict]:
        """(builder name, keyword arguments) for `autodiff.models.BUILDERS[name](**kwargs)`."""
        if isinstance(self.model, (GraphModel, TorchModel)):
            raise ConfigError([f"{self.name}: model: is not a builder"])
        return self.model.builder, self.model.model_dump(exclude={"builder"})

    def forward_graph(self):
        """The model's forward Graph: built by its builder, read from `model.graph`, or
        imported from `model.torch` (with its training loss)."""
        if isinstance(self.model, TorchModel):
            from modelcut.imported_model import imported_loss_graph
            return imported_loss_graph(self)
        if isinstance(self.model, GraphModel):
            path = Path(self.model.graph)
            if path.suffix == ".onnx":
                from autodiff.onnx_import import load_onnx
                return load_onnx(path, dims=self.model.dims)
            from autodiff.io import load_graph
            return load_graph(path)
        from autodiff.io import check_graph_bounds
        from autodiff.models import BUILDERS
        builder, kwargs = self.model_kwargs()
        graph = BUILDERS[builder](**kwargs)
        check_graph_bounds(graph, f"{self.name}: model ({builder} builder)")
        return graph

    def cluster_spec(self) -> dict:
        """The cluster as plain numbers in a shape `partition.cluster.Cluster.from_spec` takes."""
        if "file" in self.cluster:
            raise ConfigError([f"cluster.file {self.cluster['file']!r} was not loaded; "
                               "use load_config()"])
        return copy.deepcopy(self.cluster)


# ------------------------------------------------------------------------ loading
def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; raise ConfigError listing every problem."""
    path = Path(path)
    data = _read_yaml(path)
    given: dict = {}
    if isinstance(data, dict):
        data = dict(data)
        data.setdefault("name", path.name.split(".")[0])
        given = _resolve_paths(data, path.parent)
    config = validate_config(data, str(path))
    problems: list[str] = []
    if isinstance(config.model, GraphModel) and not Path(config.model.graph).is_file():
        problems.append(f"{path}: model.graph: expected an existing file, got "
                        f"{given['model']['graph']!r} (resolved to "
                        f"{Path(config.model.graph).resolve()})")
    if "file" in config.cluster:
        try:
            config = config.model_copy(update={"cluster": _load_cluster_file(config.cluster,
                                                                             path, given)})
        except ConfigError as exc:
            problems += exc.problems
    if not problems:
        problems += _check_cluster(config, str(path))
    if problems:
        raise ConfigError(problems)
    return config


def validate_config(data: Any, source: str = "<config>") -> Config:
    """Validate already-parsed config data; `source` names it in the problem lines."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of sections (model, cluster, "
                           f"partition, training), got {_show(data)}"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(source, e) for e in exc.errors()]) from None


def _read_yaml(path: Path) -> Any:
    try:
        return read_yaml(path)
    except YamlFileError as exc:
        raise ConfigError([str(exc)]) from None


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make `model.graph`, `cluster.file` and `model.folder` relative to the config file's
    folder; returns the sections as given (for messages naming both paths)."""
    given = {}
    for section, key in (("model", "graph"), ("cluster", "file"), ("model", "folder")):
        body = data.get(section)
        if isinstance(body, dict) and isinstance(body.get(key), str) and body[key]:
            given.setdefault(section, body)
            data[section] = {**body, key: str(base / Path(body[key]).expanduser())}
    model = data.get("model")
    if isinstance(model, dict) and "torch" in model and "folder" not in model:
        data["model"] = {**model, "folder": str(base)}
    return given


def _load_cluster_file(reference: dict, config_path: Path, given: dict) -> dict:
    """The cluster section in `cluster.file` (under a `cluster:` key or not), normalized."""
    from partition.cluster_spec import normalize
    from partition.errors import ClusterError
    path = Path(reference["file"])
    if not path.is_file():
        raw = given.get("cluster", {}).get("file", reference["file"])
        relative = ("" if Path(raw).expanduser().is_absolute() else
                    " (a relative path is relative to the config file's folder)")
        raise ConfigError([f"{config_path}: cluster.file: {raw!r} resolves to "
                           f"{path.resolve()}, which is not a file{relative}"])
    data = _read_yaml(path)
    if not (isinstance(data, dict) and "cluster" in data):
        data = {"cluster": data}
    extra = [f"{path}: {_key(key)}: unknown key (expected cluster)" for key in data
             if key != "cluster"]
    if extra:
        raise ConfigError(extra)
    try:
        return normalize(data["cluster"])
    except ClusterError as exc:
        raise ConfigError([f"{path}: {exc}"]) from None


def _check_cluster(config: Config, source: str) -> list[str]:
    """Build the Cluster (when partition is importable) and check pins name its devices."""
    from partition.cluster import Cluster
    from partition.errors import ClusterError
    try:
        cluster = Cluster.from_spec(config.cluster_spec())
    except ClusterError as exc:
        return [f"{source}: {exc}"]
    problems = []
    for pattern, target in config.partition.pin.items():
        if isinstance(target, int) and target >= cluster.k:
            problems.append(f"{source}: partition.pin.{pattern}: expected a device index below "
                            f"{cluster.k}, got {target}")
        elif isinstance(target, str) and target not in cluster.device_names:
            problems.append(f"{source}: partition.pin.{pattern}: expected one of the cluster's "
                            f"devices{_did_you_mean(target, cluster.device_names)}, "
                            f"got {target!r}")
    return problems


# ------------------------------------------------------------------- messages
TYPE_WORDS = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
              "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
              "model_type": "a mapping", "model_attributes_type": "a mapping",
              "tuple_type": "a list"}
MODEL_HELP = ("expected a mapping with `graph: FILE`, `torch: package.module:factory` or "
              f"`builder: {'|'.join(BUILDER_MODELS)}`")


def _describe(source: str, error: dict) -> str:
    """One `FILE: key.path: expected ..., got ...` line for a pydantic error."""
    if error["type"] == "cluster":     # partition's cluster validator names the key path
        return f"{source}: {error['msg']}"
    loc = list(error["loc"])
    if len(loc) > 1 and loc[0] == "model" and loc[1] in ("graph", "torch", *BUILDER_MODELS):
        del loc[1]   # the discriminated-union tag pydantic inserts
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        text = "missing required key"
    elif kind == "unknown_key":
        text = error["msg"]
    elif kind in TYPE_WORDS:
        text = f"expected {TYPE_WORDS[kind]}, got {_show(value)}"
    elif kind == "too_short":
        text = f"expected at least {error.get('ctx', {}).get('min_length', 1)} item(s), got none"
    elif kind == "union_tag_invalid" and loc == ["model"]:
        tag, loc = error.get("ctx", {}).get("tag"), ["model", "builder"]
        text = (f"expected one of {', '.join(BUILDER_MODELS)}"
                f"{_did_you_mean(tag, BUILDER_MODELS)}, got {_show(tag)}")
    elif kind == "union_tag_not_found" and loc == ["model"]:
        text = f"{MODEL_HELP}, got {_show(value)}"
    else:
        text = f"{error['msg']}, got {_show(value)}"
    path = "".join(f"[{p}]" if isinstance(p, int) else (f".{_key(p)}" if i else _key(p))
                   for i, p in enumerate(loc))
    return f"{source}: {path or '(top level)'}: {text}"


def _key(key: Any) -> str:
    """A key as written in a problem line; quoted when empty or not printable (a newline in a
    key must not break the one-line message)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() else repr(key)
