"""What train.py, infer.py and analyze.py share: Hydra, one-line errors and exit codes.

Every command ends the same way:

- a user error (a bad setting, override, file, table or checkpoint; a missing required setting)
  prints one line ``<command>: error: <message>`` on stderr, without traceback, and exits 2;
- Ctrl-C prints one line ``<command>: interrupted: <what was finished and how to resume>`` and
  exits 130;
- anything else is a bug and keeps its traceback.

The command line is composed once with Hydra's compose API before Hydra runs the command, so
that an unknown key, a bad group option or a missing ``???`` setting is reported in one line
rather than in Hydra's own multi-line error (or a traceback of a missing run folder). Hydra's
flags (``--help``, ``--cfg``, ``--multirun`` ...) skip that check and go to Hydra as they are.
Torch-free: analyze.py uses it.

Example (an entry point)::

    @hydra.main(config_path="configs", config_name="infer", version_base="1.3")
    def main(cfg):
        sys.exit(guard("infer.py", infer, cfg))

    if __name__ == "__main__":
        run("infer.py", main, config_dir=Path(__file__).parent / "configs", config_name="infer",
            usage="python infer.py ckpt_path=CKPT input=MANIFEST_OR_FOLDER out_dir=DIR")
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from wmhseg.errors import WmhsegError, closest

__all__ = ["EXIT_USER_ERROR", "EXIT_INTERRUPTED", "TRAIN_ENV", "one_line", "fail", "user_error",
           "check_command_line", "guard", "print_help", "run"]

EXIT_USER_ERROR = 2
#: what train.py sets in its environment before torch loads (a caller's own setting wins): idle
#: OpenMP threads sleep instead of spinning, since spinning threads collapse PyTorch's CPU
#: throughput (up to 50x for small 3-D convolutions) whenever the cores are shared with other
#: processes, data-loader workers or DDP ranks. The training benchmark runs under it too.
TRAIN_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
EXIT_INTERRUPTED = 130
_STOP_AT = ("Config search path", "See https://hydra.cc", "Set the environment variable HYDRA_FULL_ERROR")


def one_line(text: Any) -> str:
    """``text`` on one line: its lines joined by ``; `` (Hydra's search-path and help footers dropped)."""
    parts: list[str] = []
    for line in str(text).splitlines():
        line = line.strip()
        if line.startswith(_STOP_AT):
            break
        if line:
            parts.append(line)
    return "; ".join(parts).replace(":; ", ": ").replace(".; ", "; ")


def fail(command: str, message: Any) -> NoReturn:
    """Print ``<command>: error: <message>`` on one line of stderr and exit 2."""
    print(f"{command}: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def user_error(exc: BaseException) -> WmhsegError | None:
    """The :class:`WmhsegError` behind ``exc`` (itself, or a cause: Hydra's instantiate wraps them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, WmhsegError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _missing(cfg: Any, prefix: str = "") -> list[str]:
    """Keys of ``cfg`` still ``???``, without resolving interpolations (``${hydra:...}`` needs a run)."""
    from omegaconf import DictConfig, OmegaConf

    out: list[str] = []
    for key in cfg.keys():
        if OmegaConf.is_missing(cfg, key):
            out.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(child := cfg[key], DictConfig):
            out += _missing(child, f"{prefix}{key}.")
    return out


def check_command_line(command: str, argv: Sequence[str], *, config_dir: str | os.PathLike, config_name: str,
                       usage: str) -> None:
    """Compose the config of ``argv`` (overrides only) and :func:`fail` on a bad or missing setting."""
    if any(arg.startswith("-") for arg in argv):  # Hydra's flags: --help, --cfg, -m, --config-dir ...
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        try:
            cfg = compose(config_name=config_name, overrides=list(argv))
        except (HydraException, OmegaConfBaseException) as exc:
            cause = str(exc.__cause__ or "").splitlines()[:1]  # e.g. the type a value could not be converted to
            fail(command, "; ".join([one_line(exc), *cause])
                 + _closest_setting(str(exc), lambda: compose(config_name=config_name)))
    missing = _missing(cfg)
    if missing:
        fail(command, f"missing required setting{'s' if len(missing) > 1 else ''} {', '.join(missing)}; usage: {usage}")


def _closest_setting(message: str, defaults: Callable[[], Any]) -> str:
    """``"; did you mean 'x'?"`` when ``message`` is Hydra's for an unknown key and a setting is close to it."""
    import re

    from omegaconf import DictConfig, OmegaConf

    found = re.search(r"Could not override '([^']+)'", message)
    if found is None:
        return ""
    parent, _, leaf = found.group(1).rpartition(".")
    node = OmegaConf.select(defaults(), parent) if parent else defaults()
    if not isinstance(node, DictConfig) or leaf in node:
        return ""
    close = closest(leaf, node.keys())
    return f"; did you mean '{parent + '.' if parent else ''}{close}'?" if close is not None else ""


def guard(command: str, task: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``task(*args, **kwargs)``; a user error exits 2 and Ctrl-C exits 130, each with one line on stderr.

    Called inside the Hydra task function (Hydra reports the task's exceptions itself, in several
    lines and with exit code 1, and finds its config folder from the task function's file).
    """
    try:
        return task(*args, **kwargs)
    except KeyboardInterrupt as exc:
        _interrupted(command, exc)
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        fail(command, err)


def _interrupted(command: str, exc: BaseException) -> NoReturn:
    what = one_line(exc) or "stopped; every file already written is complete (writes are atomic); rerun the same command"
    print(f"{command}: interrupted: {what}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def print_help(config_dir: str | os.PathLike, config_name: str) -> bool:
    """Print the command's help (its ``hydra.help.template`` with ``$CONFIG``, the settings and their
    defaults) and return True; False, leaving it to Hydra, when the template lists config groups.

    Hydra's own ``--help`` lists every config group of the search path before filling the template,
    whether or not the template shows them: with the training groups beside ``infer.yaml`` that
    took twice the rest of ``infer.py --help``.
    """
    import string

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True)
    template = str(cfg.hydra.help.template)
    if "CONFIG_GROUPS" in template or "FLAGS_HELP" in template:
        return False
    with open_dict(cfg):
        del cfg["hydra"]
    print(string.Template(template).safe_substitute(CONFIG=OmegaConf.to_yaml(cfg)))
    return True


def run(command: str, main: Callable[[], Any], *, config_dir: str | os.PathLike, config_name: str, usage: str) -> None:
    """Check the command line, then run the Hydra ``main``; Ctrl-C at any point exits 130 in one line.
    For an entry point's ``__main__``: the process is expected to end after it (what is left is frozen
    out of the garbage collector's reach, see below)."""
    try:
        if sys.argv[1:] == ["--help"] and print_help(config_dir, config_name):
            return
        check_command_line(command, sys.argv[1:], config_dir=config_dir, config_name=config_name, usage=usage)
        main()
    except KeyboardInterrupt as exc:
        _interrupted(command, exc)
    finally:
        # what the run leaves is about to go with the process: freezing it spares the exit's final
        # garbage collection a walk over every object (0.3 of 0.4 s after torch and MONAI)
        gc.freeze()
