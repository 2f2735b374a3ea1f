"""Command line: ``python -m app [-i IN -o OUT -m MODELS ...]``, ``python -m app demo`` and ``python -m app serve``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import allocator
from app.config import KINDS, SETTING_FIELDS, ConfigError, Settings, load_settings
from app.logs import setup_logging
from app.process_env import prepare_process

EXIT_STUDY_FAILED = 2
log = logging.getLogger("app")


# Which command takes which setting: the batch run's folders; the settings of every command; the node's (the rest).
BATCH_SETTINGS = ("input", "output", "workdir")
SHARED_SETTINGS = ("models", "device", "precision", "allocator", "reference_role", "series_rules", "sw_batch_size",
                   "mirror_tta", "registration", "brain_extraction", "progress", "log_level", "log_format", "logs",
                   "output_sr", "output_rtstruct", "output_sc")
NODE_SETTINGS = tuple(name for name in SETTING_FIELDS if name not in BATCH_SETTINGS + SHARED_SETTINGS)
SHORT_FLAGS = {"input": "-i", "output": "-o", "workdir": "-w", "models": "-m"}


def setting_option(name: str) -> str:
    """The command-line option of setting ``name`` (``--reference-role`` for reference_role)."""
    return "--" + name.replace("_", "-")


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    """The option of one setting: type, choices and help from its Settings field (None = not given)."""
    kind, meta = KINDS[name][0], SETTING_FIELDS[name].metadata
    flags = [flag for flag in (SHORT_FLAGS.get(name), setting_option(name)) if flag]
    if kind is bool:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=meta["help"])
    elif name == "destinations":
        parser.add_argument(*flags, action="append", help=meta["help"])
    else:
        parser.add_argument(*flags, type=kind if kind in (Path, int, float) else str,
                            choices=meta["choices"] or None, help=meta["help"])


def _setting_options(parser: argparse.ArgumentParser, names: Sequence[str] = SHARED_SETTINGS) -> None:
    """Options that override app.yaml / environment settings, after ``--config``."""
    parser.add_argument("--config", type=Path, help="settings file (default: $HOLOSCAN_CONFIG_PATH or app.yaml)")
    for name in names:
        _add_setting(parser, name)


class _Formatter(argparse.HelpFormatter):
    """Wraps text without breaking option names at their hyphens."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app", formatter_class=_Formatter,
        description=(
            "Segment a brain MRI study (T1, T1c, T2, FLAIR) with SegMamba and write a DICOM Segmentation, "
            "a JSON report and a PNG preview. Settings come from app.yaml, then the environment "
            "(HOLOSCAN_INPUT_PATH/OUTPUT_PATH/MODEL_PATH/WORKDIR/CONFIG_PATH, SEGMAMBA_<SETTING>), then these options."
        ),
        epilog=(
            "Sub-commands: 'python -m app demo --help' writes a synthetic study and segments it; "
            "'python -m app evaluate --help' scores the model on held-out synthetic studies through the DICOM path; "
            "'python -m app serve --help' runs the DICOM node (receive, segment, send back), with the settings "
            + ", ".join(setting_option(name) for name in NODE_SETTINGS) + "."
        ),
    )
    for name in BATCH_SETTINGS:
        _add_setting(parser, name)
    _setting_options(parser)
    return parser


def build_demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app demo",
        description="Write a synthetic brain MRI study with a known tumour, segment it, compare with the truth.",
    )
    parser.add_argument("--dir", type=Path, default=Path("demo"), help="where input/ and output/ go (default ./demo)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the synthetic study")
    _setting_options(parser)
    return parser


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app evaluate",
        description="Score the model through the whole DICOM path on held-out synthetic studies (four orientations, "
                    "cycled): Dice and HD95 per region (WT, TC, ET) on the reference series grid, volumes, a summary "
                    "table; writes DIR/cases.csv and DIR/summary.json.",
    )
    parser.add_argument("--dir", type=Path, default=Path("runs/dicom-eval"),
                        help="output folder (default runs/dicom-eval)")
    parser.add_argument("--cases", type=int, default=20, help="number of studies (default 20)")
    parser.add_argument("--seed", type=int, default=7000,
                        help="seed of the first study; then seed+1, ... (default 7000)")
    parser.add_argument("--anatomy", choices=("mni152", "phantom"), default="mni152",
                        help="synthetic head: MNI152 template anatomy (default) or the analytic phantom")
    parser.add_argument("--scale", type=float, default=1.0, help="coarsen every series' voxels by this factor")
    parser.add_argument("--keep-studies", action="store_true", help="keep the written DICOM studies")
    parser.add_argument("--motion-mm", type=float, default=5.0,
                        help="patient motion before each series after the T1c: up to this many mm (default 5)")
    parser.add_argument("--motion-deg", type=float, default=5.0, help="... and up to this many degrees (default 5)")
    parser.add_argument("--pose-mm", type=float, default=10.0, help="random head shift in the scanner (default 10 mm)")
    parser.add_argument("--pose-deg", type=float, default=15.0,
                        help="random head rotation in the scanner (default 15 degrees)")
    _setting_options(parser)
    return parser


def build_serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app serve",
        description="Run the DICOM node: a Storage SCP (and optional inbox folder) receives studies, each complete "
                    "study is segmented once, its DICOM outputs are sent to the destinations. Status page, /healthz "
                    "and /metrics on the web port.",
    )
    _setting_options(parser, SHARED_SETTINGS + NODE_SETTINGS)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (None: not given, or not an option of this command)."""
    return {name: getattr(args, name, None) for name in SETTING_FIELDS}


def _fail(error: BaseException, settings: Settings | None) -> int:
    """Print the one ``ERROR ...`` line of a failed run; a traceback only for a bug."""
    from operators.errors import ConfigurationError, StudyError, one_line

    folder = str(settings.input) if settings is not None else ""
    if isinstance(error, StudyError):
        if error.details:
            log.info("details:\n%s", error.details)
        line = error.with_context(folder=folder).line()
    elif isinstance(error, ConfigurationError):
        line = f"configuration: {error}"
    else:
        log.error("unexpected failure (a bug, not bad input)", exc_info=error)
        reason = one_line(str(error)) or type(error).__name__
        line = f"study in {folder or '?'}: internal error ({type(error).__name__}: {reason})"
    print(f"ERROR {line}", file=sys.stderr)
    return EXIT_STUDY_FAILED


def main(argv: Sequence[str] | None = None, *, program: bool = False) -> int:
    """Run one command. ``program``: this call is the process's program (``python -m app``, the MAP
    entry), so a run of the network may restart the process with its memory allocator (app/allocator.py)."""
    prepare_process()  # before monai is imported: any uid and any HOME, as in containers run with --user
    argv = list(sys.argv[1:] if argv is None else argv)
    demo = bool(argv) and argv[0] == "demo"
    if argv and argv[0] == "serve":
        return _serve(build_serve_parser().parse_args(argv[1:]))
    if argv and argv[0] == "requeue":
        return _requeue(build_requeue_parser().parse_args(argv[1:]))
    if argv and argv[0] == "evaluate":
        return _evaluate(build_evaluate_parser().parse_args(argv[1:]), program)
    args = (build_demo_parser() if demo else build_parser()).parse_args(argv[1:] if demo else argv)
    settings: Settings | None = None
    try:
        overrides = _overrides(args)
        if demo:
            overrides.update(input=args.dir / "input", output=args.dir / "output")
        settings = load_settings(args.config, overrides=overrides)
        setup_logging(settings)
        _use_allocator(settings, program)
        from app.batch import run_batch  # heavy imports (torch, monai, holoscan) after parsing

        if demo:
            from app.demo import run_demo

            summary = run_demo(settings, args.seed)
        else:
            files, times = run_batch(settings)
            summary = {"segmentation": str(files.segmentation), "report": str(files.report),
                       "preview": str(files.preview), "seconds": {k: round(v, 2) for k, v in times.items()}}
    except Exception as error:  # bad input and misconfiguration: one line; bugs: also a traceback
        return _fail(error, settings)
    print(json.dumps(summary, indent=2))
    return 0


def _sub_command_settings(args: argparse.Namespace) -> Settings | None:
    """Settings of a sub-command with logging configured; None (after one ERROR line) if they are invalid."""
    try:
        settings = load_settings(args.config, overrides=_overrides(args))
    except ConfigError as error:
        print(f"ERROR configuration: {error}", file=sys.stderr)
        return None
    setup_logging(settings)
    return settings


def _use_allocator(settings: Settings, program: bool) -> None:
    """Restart the program with the configured allocator when it is not in use yet (before torch is imported)."""
    if program:
        allocator.restart_with(settings.allocator)
    log.info("memory allocator: %s", allocator.in_use())


def _evaluate(args: argparse.Namespace, program: bool) -> int:
    """``python -m app evaluate``: print the summary table; exit 0 unless the evaluation itself failed."""
    settings = _sub_command_settings(args)
    if settings is None:
        return EXIT_STUDY_FAILED
    from operators.errors import ConfigurationError

    try:
        _use_allocator(settings, program)
    except ConfigurationError as error:  # allocator jemalloc required and not installed
        print(f"ERROR configuration: {error}", file=sys.stderr)
        return EXIT_STUDY_FAILED
    from app.evaluation import StudyMotion, run_evaluation

    motion = StudyMotion(args.motion_mm, args.motion_deg, args.pose_mm, args.pose_deg)
    summary = run_evaluation(settings, args.cases, args.seed, args.dir, anatomy_kind=args.anatomy, scale=args.scale,
                             keep=args.keep_studies, motion=motion)
    print(summary["table"])
    if summary["failed"]:
        print(f"studies rejected by the application (scored 0): {', '.join(summary['failed'])}")
    print(f"per case: {args.dir / 'cases.csv'}; summary: {args.dir / 'summary.json'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """``python -m app serve``: run the node until SIGTERM/SIGINT."""
    settings = _sub_command_settings(args)
    if settings is None:
        return EXIT_STUDY_FAILED
    from app.node.service import serve
    from operators.errors import ConfigurationError

    try:
        allocator.environment_for(settings.allocator, {})  # a required jemalloc that is missing: refuse to start
        serve(settings)
    except ConfigurationError as error:  # TLS files, web access: refuse to start, one line
        print(f"ERROR configuration: {error}", file=sys.stderr)
        return EXIT_STUDY_FAILED
    except OSError as error:  # port in use, spool not writable, ...
        print(f"ERROR node: {error}", file=sys.stderr)
        return 1
    return 0


def build_requeue_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app requeue",
        description="Process a study of the node again (a failed one, or a done one: the new result supersedes the "
                    "last). Works while the node runs; it uses the journal in the spool folder.",
    )
    parser.add_argument("study", nargs="+", help="StudyInstanceUID(s)")
    parser.add_argument("--config", type=Path, help="settings file (default: $HOLOSCAN_CONFIG_PATH or app.yaml)")
    parser.add_argument("--spool", type=Path, help="spool folder (default: the settings' spool)")
    return parser


def _requeue(args: argparse.Namespace) -> int:
    """``python -m app requeue STUDY...``: put the studies' jobs back in the queue; 2 if one is not found."""
    from app.node.state.journal import Journal

    try:
        settings = load_settings(args.config, overrides={"spool": args.spool})
    except ConfigError as error:
        print(f"ERROR configuration: {error}", file=sys.stderr)
        return EXIT_STUDY_FAILED
    journal_path = settings.spool / "journal.sqlite3"
    if not journal_path.is_file():
        print(f"ERROR no journal at {journal_path}", file=sys.stderr)
        return EXIT_STUDY_FAILED
    journal = Journal(journal_path)
    status = 0
    for study in args.study:
        answer = journal.requeue(study, "requeue command")
        print(f"study {study}: {answer}")
        status = status or (EXIT_STUDY_FAILED if answer == "unknown study" else 0)
    journal.close()
    return status
