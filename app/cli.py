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

from app.config import ConfigError, Settings, load_settings
from app.logs import setup_logging
from app.process_env import prepare_process

EXIT_STUDY_FAILED = 2
log = logging.getLogger("app")


def _setting_options(parser: argparse.ArgumentParser) -> None:
    """Options that override app.yaml / environment settings (None = not given)."""
    parser.add_argument("--config", type=Path, help="settings file (default: $HOLOSCAN_CONFIG_PATH or app.yaml)")
    parser.add_argument("-m", "--models", type=Path, help="model folder, or a folder holding one (HOLOSCAN_MODEL_PATH)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto: CUDA when available)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"),
                        help="network arithmetic (default auto: card, else bfloat16 on a BF16 CPU, float16 on CUDA)")
    parser.add_argument("--reference-role", choices=("t1n", "t1c", "t2w", "t2f"),
                        help="series whose grid the SEG is drawn on (default t1c)")
    parser.add_argument("--series-rules", type=Path, help="series selection rules JSON (MONAI Deploy selector format)")
    parser.add_argument("--sw-batch-size", type=int, help="sliding windows per forward pass (default: model card)")
    parser.add_argument("--mirror-tta", action=argparse.BooleanOptionalAction, default=None,
                        help="8-way mirroring test-time augmentation (default: model card)")
    parser.add_argument("--registration", choices=("card", "on", "off"),
                        help="rigid registration of every series onto the reference (default: model card)")
    parser.add_argument("--brain-extraction", choices=("card", "on", "off"),
                        help="deepbet brain mask applied to every channel (default: model card)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar during inference (default on)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default INFO")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="text, or JSON lines with study_uid and job_id for log collectors (default text)")
    parser.add_argument("--logs", help="folder for log files beside stderr (default: $HOLOSCAN_LOGS_PATH, else none)")
    for option, text in (("--output-sr", "TID 1500 SR of the volumes, measurement-report.dcm (default on)"),
                         ("--output-rtstruct", "RT Structure Set of the contours, rtstruct.dcm (default off)"),
                         ("--output-sc", "Secondary Capture overlay series, overlay/*.dcm (default off)")):
        parser.add_argument(option, action=argparse.BooleanOptionalAction, default=None, help=text)


# The DICOM node's settings: (option, type, help). Each fills the Settings field of the same name.
NODE_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("--ae-title", str, "our AE title (default SEGMAMBA)"),
    ("--port", int, "DICOM port of the Storage SCP (default 11112)"),
    ("--bind-address", str, "address the SCP listens on (default 127.0.0.1)"),
    ("--allowed-calling-aes", str, "comma-separated calling AE titles accepted (default: any)"),
    ("--max-associations", int, "concurrent associations (default 32)"),
    ("--max-study-instances", int, "instances accepted per study (default 10000)"),
    ("--max-study-mb", int, "MiB accepted per study (default 4096)"),
    ("--spool", Path, "spool folder: received instances, outputs, journal (default ./spool)"),
    ("--inbox", Path, "watched folder for dropped DICOM files (default: none)"),
    ("--quiet-seconds", float, "ready when all four sequences are present and quiet this long (default 10)"),
    ("--stable-seconds", float, "ready anyway when quiet this long (default 60)"),
    ("--forced-seconds", float, "ready at the latest this long after the first instance (default 3600)"),
    ("--job-timeout", float, "seconds one job may run (default 1800)"),
    ("--job-retries", int, "further attempts after a transient failure (default 2)"),
    ("--destinations", str, "destination NAME=AET@HOST:PORT[+tls][+commit] (C-STORE, +commit: Storage Commitment "
                            "required) or NAME=http(s)://HOST/dicom-web[+token=FILE] (STOW-RS), or a JSON list "
                            "of mappings; repeat for several"),
    ("--send-backoff", float, "first retry delay in seconds while a destination is down (default 5)"),
    ("--send-backoff-max", float, "longest retry delay in seconds (default 600)"),
    ("--commitment-timeout", float, "seconds to wait for a Storage Commitment report before sending again "
                                    "(default 300)"),
    ("--http-port", int, "web port: status page, /healthz, /metrics (default 8080; 0 = any free port)"),
    ("--http-bind", str, "web address (default 127.0.0.1)"),
    ("--retention-days", float, "delete spool files of finished jobs after this many days (default 7)"),
    ("--tls-cert", Path, "PEM certificate: TLS on the SCP and on destinations marked +tls"),
    ("--tls-key", Path, "PEM private key of --tls-cert"),
    ("--tls-ca", Path, "PEM CA bundle to verify peers"),
    ("--tls-require-client-cert", None, "SCP: require a client certificate signed by --tls-ca"),
    ("--heartbeat-timeout", float, "a running job without a worker heartbeat this long is requeued (default 60)"),
    ("--max-job-runs", int, "a job started this often without an outcome fails (default 10)"),
    ("--retention-interval", float, "seconds between retention passes (default 10)"),
    # node intake and security
    ("--association-request-timeout", float, "seconds a new connection may take to send its A-ASSOCIATE-RQ "
                                             "(TLS handshake included) before it is closed (default 5)"),
    ("--max-associations-per-peer", int, "concurrent connections from one IP address (default 16)"),
    ("--min-free-mb", int, "answer 0xA700 while the spool has less free space, in MiB (default 512)"),
    ("--quarantine-mb", int, "MiB of refused instances kept in <spool>/quarantine (default 256)"),
    ("--http-auth", None, "web pages need a token or basic auth; /healthz, /readyz stay open (default on)"),
    ("--http-token", str, "bearer token (also the basic-auth password for any user); default: generated into "
                          "<spool>/http-token"),
    ("--http-user", str, "basic-auth user (with --http-password)"),
    ("--http-password", str, "basic-auth password of --http-user (prefer SEGMAMBA_HTTP_PASSWORD)"),
    ("--show-phi", None, "show patient ID, accession and previews on the web pages (default: masked, no previews)"),
)


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
            + ", ".join(option for option, _type, _help in NODE_OPTIONS) + "."
        ),
    )
    parser.add_argument("-i", "--input", type=Path, help="folder of DICOM files of one study (HOLOSCAN_INPUT_PATH)")
    parser.add_argument("-o", "--output", type=Path, help="folder for the results (HOLOSCAN_OUTPUT_PATH)")
    parser.add_argument("-w", "--workdir", type=Path, help="scratch folder (HOLOSCAN_WORKDIR)")
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
    _setting_options(parser)
    for option, kind, text in NODE_OPTIONS:
        if kind is None:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif option == "--destinations":
            parser.add_argument(option, action="append", help=text)
        else:
            parser.add_argument(option, type=kind, help=text)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("input", "output", "workdir", "models", "device", "precision", "reference_role", "series_rules",
            "sw_batch_size", "mirror_tta", "registration", "brain_extraction", "progress", "log_level", "log_format",
            "logs", "output_sr", "output_rtstruct", "output_sc")
    keys += tuple(option[2:].replace("-", "_") for option, _type, _help in NODE_OPTIONS)
    return {key: getattr(args, key, None) for key in keys}


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


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()  # before monai is imported: any uid and any HOME, as in containers run with --user
    argv = list(sys.argv[1:] if argv is None else argv)
    demo = bool(argv) and argv[0] == "demo"
    if argv and argv[0] == "serve":
        return _serve(build_serve_parser().parse_args(argv[1:]))
    if argv and argv[0] == "requeue":
        return _requeue(build_requeue_parser().parse_args(argv[1:]))
    if argv and argv[0] == "evaluate":
        return _evaluate(build_evaluate_parser().parse_args(argv[1:]))
    args = (build_demo_parser() if demo else build_parser()).parse_args(argv[1:] if demo else argv)
    settings: Settings | None = None
    try:
        overrides = _overrides(args)
        if demo:
            overrides.update(input=args.dir / "input", output=args.dir / "output")
        settings = load_settings(args.config, overrides=overrides)
        setup_logging(settings)
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


def _evaluate(args: argparse.Namespace) -> int:
    """``python -m app evaluate``: print the summary table; exit 0 unless the evaluation itself failed."""
    settings = _sub_command_settings(args)
    if settings is None:
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
