"""Command line: argv -> Hydra overrides -> composed, schema-checked config -> registry -> Fabric launch.

``--flag value`` and ``key=value`` are two spellings of one thing: a flag resolves to the unique
schema key whose dotted path, underscore path, leaf, ``group_leaf`` or ``parent_leaf`` matches
(``--num_envs`` -> ``env.num_envs``, ``--env_id`` -> ``env.id``, ``--optimizer_lr`` -> ``algo.optimizer.lr``).

Every user-caused error ends with one line on stderr and exit code 2, before any run folder
exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import signal
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from sheeprl.config import ConfigError, validate_common


def _builtin_config_dir() -> Path:
    """``configs/`` at the top of a source checkout; inside the package (``sheeprl/configs``) in a built wheel."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if (packaged / "config.yaml").is_file() else here.parent / "configs"


CONFIG_DIR = _builtin_config_dir()
CONFIG_DIR_ENV = "SHEEPRL_CONFIG_DIR"
# The user's preset folders (``--config_dir`` and $SHEEPRL_CONFIG_DIR), searched before the built-in one.
USER_CONFIG_DIRS: list[Path] = []
CONFIG_GROUPS = ("algo", "env", "exp", "fabric", "buffer", "checkpoint", "metric")
EXIT_USAGE = 2

# Sub-commands that are not algorithms: name -> "module:function" taking argv, returning an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("sheeprl.evaluate", "main"),
    "plot": ("sheeprl.plot", "main"),
    "export": ("sheeprl.export", "main"),
    "tune": ("sheeprl.tune", "main"),
}


class UsageError(Exception):
    """A user-caused error: printed on one line, exit code 2."""


# --------------------------------------------------------------------------------------------- schema


@dataclasses.dataclass(frozen=True)
class SchemaField:
    key: str  # dotted path, e.g. "algo.optimizer.lr"
    type: Any
    default: Any
    help: str
    catch_all: bool = False  # a dict that receives its group's keys the schema does not name

    @property
    def type_name(self) -> str:
        return _type_name(self.type)

    @property
    def is_bool(self) -> bool:
        return _strip_optional(self.type) is bool

    @property
    def is_list(self) -> bool:
        return typing.get_origin(_strip_optional(self.type)) in (list, list)

    @property
    def is_str(self) -> bool:
        return _strip_optional(self.type) is str


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(tp: Any) -> str:
    optional = typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)
    base = _strip_optional(tp)
    origin = typing.get_origin(base)
    if origin in (list, list):
        name = f"list[{_type_name(typing.get_args(base)[0])}]"
    elif origin in (dict, dict):
        name = "dict"
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name}?" if optional else name


def schema_fields(schema: type, prefix: str = "", instance: Any = None) -> list[SchemaField]:
    """Flatten a dataclass schema into its leaf fields (nested dataclasses are groups, defaults from the parent)."""
    out: list[SchemaField] = []
    hints = typing.get_type_hints(schema)
    instance = schema() if instance is None else instance
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(schema_fields(type(value), key + ".", value))
        else:
            out.append(SchemaField(key, tp, value, f.metadata.get("help", ""), f.metadata.get("catch_all", False)))
    return out


def resolve_flag(flag: str, fields: Sequence[SchemaField]) -> SchemaField:
    """Map a flag name (without dashes) to its unique schema field."""
    by_key = {f.key: f for f in fields}
    if flag in by_key:
        return by_key[flag]
    candidates = []
    for f in fields:
        parts = f.key.split(".")
        spellings = {f.key.replace(".", "_"), parts[-1]}
        if len(parts) > 1:
            spellings.add(f"{parts[0]}_{parts[-1]}")
            spellings.add(f"{parts[-2]}_{parts[-1]}")
        if flag in spellings:
            candidates.append(f)
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        # Prefer the shortest spelling match (a top-level leaf wins over nested ones).
        # The underscore spelling of a whole key (algo_name -> algo.name) beats a group_leaf of a deeper key
        # (algo.optimizer.name), and a top-level leaf wins over nested ones.
        exact = [c for c in candidates if c.key.replace(".", "_") == flag]
        if len(exact) == 1:
            return exact[0]
        top = [c for c in candidates if c.key == flag or c.key.split(".")[-1] == flag and "." not in c.key]
        if len(top) == 1:
            return top[0]
        names = ", ".join("--" + c.key for c in candidates)
        raise UsageError(f"ambiguous flag --{flag}: it matches {names}; use the dotted key")
    raise UsageError(f"unknown flag --{flag}{_suggest_flags(flag, fields)}")


def _suggest_flags(flag: str, fields: Sequence[SchemaField]) -> str:
    """Did-you-mean over every spelling, reported once per key in its preferred spelling."""
    spelling_to_key: dict[str, str] = {}
    for f in fields:
        parts = f.key.split(".")
        for name in (parts[-1], f"{parts[0]}_{parts[-1]}", f.key):
            spelling_to_key.setdefault(name, f.key)
    close = difflib.get_close_matches(flag, list(spelling_to_key), n=6, cutoff=0.6)
    keys = list(dict.fromkeys(spelling_to_key[c] for c in close))[:3]
    if not keys:
        return ""
    return " (did you mean " + " or ".join(f"'{_preferred_flag(k, fields)}'" for k in keys) + "?)"


# Leaves too generic to stand alone in help and hints: shown as ``group_leaf`` (--env_id, --algo_name, --buffer_size).
_GENERIC_LEAVES = frozenset({"id", "name", "size", "every", "kwargs"})


def _preferred_flag(key: str, fields: Sequence[SchemaField]) -> str:
    """``--group_leaf`` for a generic leaf, else ``--leaf``, when that spelling resolves to ``key``; else the dotted key."""
    parts = key.split(".")
    spellings = [f"{parts[0]}_{parts[-1]}"] if len(parts) > 1 and parts[-1] in _GENERIC_LEAVES else []
    for spelling in [*spellings, parts[-1]]:
        try:
            if resolve_flag(spelling, fields).key == key:
                return "--" + spelling
        except UsageError:
            continue
    return "--" + key


def _did_you_mean(word: str, choices: Sequence[str], prefix: str = "--") -> str:
    close = difflib.get_close_matches(word, list(dict.fromkeys(choices)), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?)"


# --------------------------------------------------------------------------------------------- config folders


def config_dirs() -> list[Path]:
    """Every folder presets are read from, first match wins: the user's folders, then the built-in one."""
    return [*USER_CONFIG_DIRS, CONFIG_DIR]


def group_options(group: str) -> list[str]:
    """The names ``group=NAME`` accepts (built-in and user presets)."""
    return sorted({p.stem for d in config_dirs() for p in (d / group).glob("*.yaml")})


def find_preset(group: str, name: str) -> Optional[Path]:
    for d in config_dirs():
        path = d / group / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def _take_config_dirs(argv: list[str]) -> list[str]:
    """Remove ``--config_dir DIR`` / ``--config_dir=DIR`` from argv (and read $SHEEPRL_CONFIG_DIR) into USER_CONFIG_DIRS."""
    dirs: list[str] = [d for d in os.environ.get(CONFIG_DIR_ENV, "").split(os.pathsep) if d]
    rest: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--config_dir":
            if i + 1 >= len(argv):
                raise UsageError("flag --config_dir needs a folder")
            dirs.append(argv[i + 1])
            i += 2
            continue
        if tok.startswith("--config_dir="):
            dirs.append(tok.split("=", 1)[1])
        else:
            rest.append(tok)
        i += 1
    USER_CONFIG_DIRS.clear()
    for d in dirs:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise UsageError(f"--config_dir {d}: no such folder")
        # Cmd-line flags come after the environment variable: the last folder given is searched first.
        USER_CONFIG_DIRS.insert(0, path)
    return rest


# --------------------------------------------------------------------------------------------- argv


def _quote(value: str) -> str:
    """Quote a string value for Hydra's override grammar when it has characters the grammar reserves."""
    if value == "" or any(c in value for c in " ,[]{}()'\"=:\\$#"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


def _format_value(field: SchemaField, value: str) -> str:
    if field.is_list and not value.startswith("["):
        return "[" + value + "]"
    if field.is_str and value not in ("null", "None"):
        return _quote(value)
    return value


def argv_to_overrides(args: Sequence[str], fields: Sequence[SchemaField]) -> list[str]:
    """Turn ``--flag value`` / ``--flag=value`` / ``key=value`` tokens into Hydra override strings."""
    overrides: list[str] = []
    by_key = {f.key: f for f in fields}
    i = 0
    while i < len(args):
        tok = args[i]
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            field = resolve_flag(name, fields)
            if not eq:
                nxt = args[i + 1] if i + 1 < len(args) else None
                takes_next = nxt is not None and not nxt.startswith("--") and not (field.is_bool and "=" in nxt)
                if field.is_bool and (nxt is None or not takes_next or nxt.lower() not in _BOOL_WORDS):
                    value = "true"
                elif takes_next:
                    value = nxt
                    i += 1
                else:
                    raise UsageError(f"flag --{name} needs a value ({field.key}: {field.type_name})")
            overrides.append(f"{field.key}={_format_value(field, value)}")
        elif "=" in tok and not tok.startswith("-"):
            key, _, value = tok.partition("=")
            bare = key.lstrip("+~")
            if bare in CONFIG_GROUPS:
                options = group_options(bare)
                if value not in options and value != "null":
                    raise UsageError(f"unknown preset {bare}={value}{_did_you_mean(value, options, prefix=bare + '=')}")
            elif _under_dict_field(bare, fields):
                tok = f"++{bare}={value}"  # free-form dicts (e.g. env.kwargs) accept new keys
            elif bare not in by_key and _catch_all(bare, fields):
                tok = f"++{_catch_all(bare, fields)}.{bare.rpartition('.')[2]}={value}"  # algo.optimizer.alpha
            elif bare not in by_key:
                raise UsageError(f"unknown config key '{bare}'{_did_you_mean(bare, list(by_key), prefix='')}")
            overrides.append(tok)
        else:
            raise UsageError(f"unexpected argument '{tok}' (flags look like --num_envs 8, overrides like env.id=X)")
        i += 1
    return overrides


_BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "on", "off"}


def _catch_all(key: str, fields: Sequence[SchemaField]) -> Optional[str]:
    """The catch-all dict of ``key``'s group (``algo.optimizer.alpha`` -> ``algo.optimizer.kwargs``), if it has one."""
    group = key.rpartition(".")[0]
    return next((f.key for f in fields if f.catch_all and f.key.rpartition(".")[0] == group), None)


def _under_dict_field(key: str, fields: Sequence[SchemaField]) -> bool:
    return any(key.startswith(f.key + ".") and f.type_name.startswith("dict") for f in fields)


# --------------------------------------------------------------------------------------------- compose


def _preset_algo(name: str) -> str:
    """The algorithm an ``exp=`` preset selects (its ``override /algo: X`` default)."""
    import yaml

    path = find_preset("exp", name)
    if path is None:
        presets = group_options("exp")
        raise UsageError(f"unknown preset exp={name}{_did_you_mean(name, presets, prefix='exp=')}")
    data = yaml.safe_load(path.read_text()) or {}
    for item in data.get("defaults", []):
        if isinstance(item, dict):
            for k, v in item.items():
                if k.replace("override", "").strip().lstrip("/") == "algo":
                    return str(v)
    raise UsageError(f"preset exp={name} does not select an algorithm (add 'override /algo: NAME' to its defaults)")


def compose_config(spec: Any, overrides: Sequence[str]) -> Any:
    """Compose ``configs/`` on top of the algorithm's typed schema; returns a struct DictConfig."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="sheeprl_schema", node=spec.schema)
    _register_user_search_path()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"algo={spec.name}", *overrides])
    except Exception as err:  # Hydra wraps OmegaConf's errors; keep the most specific line.
        raise UsageError(_compose_error(err)) from None
    OmegaConf.set_struct(cfg, True)
    return cfg


def _register_user_search_path() -> None:
    """Put the user's preset folders before the built-in one in Hydra's search path (so they can shadow it)."""
    global _SEARCH_PATH_REGISTERED
    if not USER_CONFIG_DIRS or _SEARCH_PATH_REGISTERED:
        return  # the plugin reads USER_CONFIG_DIRS at every compose: registering it once is enough
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class UserPresets(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            for path in reversed(USER_CONFIG_DIRS):
                search_path.prepend(provider="sheeprl-user", path=f"file://{path}")

    Plugins.instance().register(UserPresets)
    _SEARCH_PATH_REGISTERED = True


_SEARCH_PATH_REGISTERED = False


def _compose_error(err: BaseException) -> str:
    chain: list[BaseException] = []
    cur: Optional[BaseException] = err
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    # OmegaConf's errors know the offending key; prefer the first of them, else the innermost error.
    keyed = [e for e in chain if getattr(e, "full_key", None)]
    if keyed:
        inner = keyed[0]
    else:  # the innermost error that says something (a parser's inner error can print as "None")
        inner = next((e for e in reversed(chain) if str(e).strip() not in ("", "None")), chain[0])
    msg = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    if any(type(e).__name__ == "OverrideParseException" for e in chain):
        msg = f"cannot parse an override ({msg}); quote values with '=' or brackets, e.g. run_name='a=b'"
    key = getattr(inner, "full_key", None)
    return f"invalid value for {key}: {msg}" if key else msg


def _check_env(spec: Any, cfg: Any) -> None:
    from sheeprl.envs import EnvError, check_env_id, make_env

    try:
        check_env_id(cfg.env.id)
        env = make_env(cfg, seed=cfg.seed, idx=0)()
    except EnvError as err:
        raise UsageError(str(err)) from None
    try:
        kind = type(env.action_space).__name__
    finally:
        env.close()
    if kind not in spec.action_spaces:
        allowed = ", ".join(spec.action_spaces)
        raise UsageError(f"{spec.name} does not support {kind} action spaces ({cfg.env.id}); it supports: {allowed}")
    if spec.check_env is not None:
        try:
            spec.check_env(cfg, env)
        except ConfigError as err:
            raise UsageError(str(err)) from None


def _is_under_fabric_run() -> bool:
    return bool(int(os.environ.get("LT_CLI_USED", "0")))


def _check_resume(cfg: Any) -> None:
    """``--resume_from`` must name a readable sheeprl checkpoint of this algorithm and of envs with the same
    spaces: checked here, before the launch writes anything (a run folder, a config_resume_*.yaml, events)."""
    path = cfg.checkpoint.resume_from
    if not path:
        return
    import copy

    from omegaconf import OmegaConf

    from sheeprl.envs import EnvError, make_vector_env
    from sheeprl.utils.checkpoint import load_checkpoint, space_signature

    try:
        state = load_checkpoint(path, mmap=True)  # the run loads it again: only a look here, even at a big buffer
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    meta = state.get("meta") if isinstance(state.get("meta"), dict) else {}
    saved_cfg = Path(path).resolve().parent.parent / "config.yaml"  # checkpoints older than "meta": their run's config
    saved = OmegaConf.load(saved_cfg) if not meta and saved_cfg.is_file() else None
    algo = meta.get("algo") or (saved.get("algo", {}).get("name") if saved is not None else None)
    if algo is not None and str(algo) != cfg.algo.name:
        raise UsageError(f"{path} is a checkpoint of '{algo}', not of '{cfg.algo.name}'")
    env_id = meta.get("env_id") or (saved.get("env", {}).get("id") if saved is not None else None)

    def signatures(env_id: str) -> tuple[str, str]:
        probe = copy.deepcopy(cfg)
        probe.env.id, probe.env.sync_env = env_id, True
        try:
            envs = make_vector_env(probe, seed=int(cfg.seed), num_envs=1, capture_video=False)
        except EnvError as err:
            raise UsageError(f"cannot rebuild the env of {path}: {err}") from None
        try:
            return space_signature(envs.single_observation_space), space_signature(envs.single_action_space)
        finally:
            envs.close()

    if "observation_space" in meta:
        expected = (meta["observation_space"], meta["action_space"])
    elif env_id is not None and str(env_id) != cfg.env.id:
        expected = signatures(str(env_id))
    else:
        return
    obs_sig, act_sig = signatures(cfg.env.id)
    for what, have, want in (("observation", obs_sig, expected[0]), ("action", act_sig, expected[1])):
        if have != want:
            raise UsageError(f"{path} was trained on {env_id} with {what} space {want}; {cfg.env.id} here has {have}")


def _world_size(cfg: Any) -> int:
    from sheeprl.config import world_size

    return world_size(cfg)


def build_config(algo: str, args: Sequence[str]) -> tuple[Any, Any]:
    """Everything up to (not including) the launch: returns (spec, cfg) or raises UsageError."""
    from sheeprl.registry import get_algorithm, load_algorithms

    spec = get_algorithm(algo)
    if spec is None:
        raise UsageError(
            f"unknown algorithm '{algo}'{_did_you_mean(algo, list(load_algorithms()), prefix='')}; "
            "run 'python sheeprl.py --sheeprl_help' to list them"
        )
    fields = schema_fields(spec.schema)
    overrides = argv_to_overrides(args, fields)
    cfg = compose_config(spec, overrides)
    try:
        validate_common(cfg)
        from sheeprl.utils.optim import validate_optimizers

        validate_optimizers(cfg, spec.schema)
        if spec.validate is not None:
            spec.validate(cfg)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    precision = os.environ.get("LT_PRECISION") if _is_under_fabric_run() else None
    precision = str(precision or cfg.fabric.precision)
    if spec.decoupled and precision not in ("32-true", "32"):
        # The trainers run their own DDP over their own group, outside Fabric's precision plugin (no autocast,
        # no gradient scaler): anything but full precision would silently train something else.
        raise UsageError(f"{spec.name} trains in full precision only: --precision {precision} is not supported")
    if _world_size(cfg) < spec.min_devices:
        raise UsageError(
            f"{spec.name} is decoupled: it needs at least 2 processes (a player and a trainer); use --devices 2 or more"
        )
    _check_env(spec, cfg)
    _check_resume(cfg)
    return spec, cfg


def launch(spec: Any, cfg: Any) -> Any:
    """Create Fabric and run the entry on every rank (see :mod:`sheeprl.launcher`)."""
    from sheeprl.launcher import launch_run

    return launch_run(spec, cfg)


# --------------------------------------------------------------------------------------------- help


def print_algorithms() -> None:
    from sheeprl.registry import load_algorithms

    algos = load_algorithms()
    print("usage: python sheeprl.py <algorithm> [--flag value ...] [key=value ...]\n\nalgorithms:")
    width = max((len(n) for n in algos), default=4)
    for name in sorted(algos):
        s = algos[name]
        kind = "decoupled" if s.decoupled else "coupled"
        print(f"  {name:<{width}}  [{kind}; {', '.join(s.action_spaces)}]  {s.description}")
    if COMMANDS:
        print("\ncommands:")
        for name in sorted(COMMANDS):
            print(f"  {name:<{width}}  python sheeprl.py {name} -h")
    print("\npython sheeprl.py <algorithm> -h lists every argument of a run.")
    print(
        "python sheeprl.py <algorithm> ... --multirun seed=1,2,3 [--jobs N] runs a sweep (howto/sweeps_and_tuning.md)."
    )


def print_arguments(spec: Any) -> None:
    fields = schema_fields(spec.schema)
    print(f"usage: python sheeprl.py {spec.name} [--flag value ...] [key=value ...] [exp=PRESET]\n")
    print(f"{spec.name}: {spec.description}\n")
    print(
        f"presets (exp=NAME, env=NAME, ...): {CONFIG_DIR}; add your own folder with --config_dir DIR"
        f" (or ${CONFIG_DIR_ENV})\n"
    )
    rows = []
    for f in fields:
        flag = _preferred_flag(f.key, fields)
        default = "null" if f.default is None else repr(f.default) if isinstance(f.default, str) else f.default
        rows.append((f.key, flag, f.type_name, str(default), f.help))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("key", "flag", "type", "default", "description")
    for r in [header, *rows]:
        print("  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:4])) + "  " + r[4])


# --------------------------------------------------------------------------------------------- main


def _split_algo(argv: list[str]) -> tuple[Optional[str], list[str]]:
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:
        return argv[0], argv[1:]
    for tok in argv:
        if tok.startswith("algo="):
            return tok.split("=", 1)[1], [t for t in argv if t is not tok]
    for tok in argv:
        if tok.startswith("exp="):
            return _preset_algo(tok.split("=", 1)[1]), argv
    return None, argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # numpy runs only small products here (acting snapshots, sheeprl/models/parallel.py), where OpenBLAS's own
    # threads cost more than they bring (a one-observation 2x256 Q-network: 40 us with 2 threads, 16 us with one);
    # torch keeps its own thread setting. Set before numpy is imported; a user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from sheeprl.utils import dynamo

    dynamo.defer()  # ~0.7 s of start-up that an eager run does not need (see sheeprl/utils/dynamo.py)
    try:
        if not argv or argv[0] in ("--sheeprl_help", "--help", "-h"):
            print_algorithms()
            return 0
        if argv[0] in COMMANDS:
            import importlib

            module, func = COMMANDS[argv[0]]
            return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
        argv = _take_config_dirs(argv)
        if any(a in ("--multirun", "-m") for a in argv):
            from sheeprl.sweep import run_sweep

            return run_sweep(argv)
        algo, rest = _split_algo(argv)
        if algo is None:
            raise UsageError("no algorithm given; run 'python sheeprl.py --sheeprl_help' to list them")
        if "-h" in rest or "--help" in rest:
            from sheeprl.registry import get_algorithm, load_algorithms

            spec = get_algorithm(algo)
            if spec is None:
                raise UsageError(f"unknown algorithm '{algo}'{_did_you_mean(algo, list(load_algorithms()), prefix='')}")
            print_arguments(spec)
            return 0
        spec, cfg = build_config(algo, rest)
    except UsageError as err:
        if _ctrl_c_pressed:  # the error is what a library made of the interrupt (see run_cli)
            raise KeyboardInterrupt from None
        print(f"sheeprl: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return _run(spec, cfg)


EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process stopped by Ctrl-C


def _run(spec: Any, cfg: Any) -> int:
    """Launch; a failure during the run ends with one line and a non-zero exit code, not a traceback."""
    from sheeprl.launcher import RunFailed, is_collective_failure, os_error_line
    from sheeprl.utils.run import RunError

    try:
        launch(spec, cfg)
    except RunError as err:
        if err.report:
            print(f"sheeprl: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except RunFailed:
        return EXIT_FAILED
    except OSError as err:
        print(f"sheeprl: error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as err:
        if not is_collective_failure(err):
            raise  # a bug keeps its traceback
        # A dead or frozen rank: the collective it left fails here (after fabric.timeout_s at worst).
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"sheeprl: error: another process of the run died or hung ({first})", file=sys.stderr)
        return EXIT_FAILED
    return 0


def script() -> None:
    """The ``sheeprl`` command and ``python sheeprl.py``: :func:`run_cli`, then leave without interpreter teardown.

    After a run, tearing the interpreter down (module dicts, torch's and Lightning's finalizers) costs about 1 s of
    CPU on a 2-core machine, a tenth of a 50k-step CartPole run. A run that ended well has closed and fsynced
    everything it wrote (logger, checkpoints, envs, child ranks), so the process ends at once; any other exit goes
    through the normal teardown, which finishes whatever a failure left open.
    """
    code = run_cli()
    if code == 0:
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed (a broken pipe) or gone
                pass
        os._exit(0)
    sys.exit(code)


_ctrl_c_pressed = False


def _on_ctrl_c(signum: int, frame: Any) -> None:
    global _ctrl_c_pressed
    _ctrl_c_pressed = True
    raise KeyboardInterrupt


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
    """``main`` for console scripts: a closed pipe (``| head``) is not an error; Ctrl-C exits 130 in one line.

    A Ctrl-C before the run takes the signal over (it lands in imports, config checks) is remembered here:
    libraries do not all survive a KeyboardInterrupt in the middle of an import (torch's lazy ``torch._dynamo``
    import, which building a test optimizer triggers, fails on the next use with a RecursionError that the
    optimizer check reported as a config error, exit 2). Whatever the interrupt turned into, it is reported as one.
    """
    global _ctrl_c_pressed
    _ctrl_c_pressed = False
    try:
        previous = signal.signal(signal.SIGINT, _on_ctrl_c)
    except ValueError:  # not the main thread
        previous = None
    try:
        code = main(argv)
        if code != 0 and _ctrl_c_pressed:
            raise KeyboardInterrupt
        return code
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # Ctrl-C during start-up, or a second one during a run
        print("sheeprl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException:
        if not _ctrl_c_pressed:
            raise
        print("sheeprl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
