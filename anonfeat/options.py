"""The Python API's option dataclasses, declared once for the API and the CLI.

Every command takes one options object (ExtractOptions, PruneOptions, AdapterTrainOptions, ...), whole
or as keyword overrides: `extract(src, out, options, batch_size=64)`. Each field that is also a
command-line flag is declared with `option(default, help, ...)`: its default, help text, choices and
bounds live on the field, `validate()` checks a whole object, and `anonfeat.cli.options` turns the
fields into the command's flags. Adding a flag is therefore one field in one dataclass.

This module and the other `options` modules import no torch, so `anonfeat --help` stays instant.
The options of the pipeline commands (extract, bench, synth) live here; each feature package keeps
its own next to its code (adapter/options.py, pruning/options.py, audit/options.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from anonfeat.errors import AnonfeatError

T = TypeVar("T")

FLAG = "anonfeat.flag"  # the key of a field's metadata that makes it a command-line flag


@dataclass(frozen=True)
class Flag:
    """How a dataclass field appears on the command line.

    names: extra spellings (short options, "--lambda" for the field lam, "--x/--no-x" for booleans);
    the long name `--field-name` is always there unless `names` gives another long one.
    choices: the allowed values (the CLI lists them in --help as an Enum; `validate()` checks them).
    cli_type / parse: when the command line spells the value differently from the field (a comma list
    for a list, a repeatable flag for a tuple), the CLI's type and the function from it to the field.
    """

    help: str
    names: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    cli_type: Any = None
    parse: Callable[[Any], Any] | None = None
    metavar: str | None = None


def option(default: Any, help: str, *names: str, choices: tuple[str, ...] | None = None, min: float | None = None,
           max: float | None = None, cli_type: Any = None, parse: Callable[[Any], Any] | None = None,
           metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag (see `Flag`)."""
    meta = {FLAG: Flag(help=help, names=tuple(names), choices=choices, min=min, max=max, cli_type=cli_type,
                       parse=parse, metavar=metavar)}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> Flag | None:
    return f.metadata.get(FLAG)


def flag_name(cls: type, name: str) -> str:
    """The command-line spelling of field `name` of `cls` (for error messages)."""
    for f in dataclasses.fields(cls):
        if f.name == name and flag_of(f) is not None:
            longs = [n.split("/")[0] for n in flag_of(f).names if n.startswith("--")]
            return longs[0] if longs else "--" + name.replace("_", "-")
    return "--" + name.replace("_", "-")


def check_choice(value: Any, choices: tuple[str, ...], flag: str) -> None:
    """One line naming the flag, the bad value and the choices."""
    if value not in choices:
        raise AnonfeatError(f"{flag} {value!r}: choose {', '.join(choices[:-1])} or {choices[-1]}"
                            if len(choices) > 1 else f"{flag} {value!r}: only {choices[0]} is supported")


def check_declared(options: Any) -> None:
    """Check every flag field of `options` against its declared choices and bounds (what the CLI
    enforces too, so the Python API refuses the same values with the same one-line messages)."""
    for f in dataclasses.fields(options):
        spec = flag_of(f)
        value = getattr(options, f.name)
        if spec is None or value is None:
            continue
        name = flag_name(type(options), f.name)
        if spec.choices is not None:
            check_choice(value, spec.choices, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if spec.min is not None and value < spec.min:
                raise AnonfeatError(f"{name} {value}: give at least {spec.min:g}")
            if spec.max is not None and value > spec.max:
                raise AnonfeatError(f"{name} {value}: give at most {spec.max:g}")


def with_overrides(options: T | None, cls: type[T], overrides: dict[str, Any]) -> T:
    """A copy of `options` (or of `cls()`) with `overrides` applied; the caller's object is never
    changed, and a misspelt option name is an error instead of being silently ignored."""
    base = cls() if options is None else options
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {type(base).__name__} option(s): {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return dataclasses.replace(base, **overrides)


# -- value spellings shared by several commands ------------------------------------------------
def comma_list(text: str | None) -> list[str] | None:
    """"a, b,c" -> ["a", "b", "c"]; None stays None (the field's "all of them")."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def numbers(kind: type, flag: str) -> Callable[[str | None], tuple]:
    """A parser of "3,6,9" into a tuple of `kind`, with a one-line error naming `flag`."""
    def parse(text: str | None) -> tuple:
        if not text:
            return ()
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise AnonfeatError(f"{flag} {text!r}: give comma-separated numbers, e.g. {flag} 3,6,9") from None
    return parse


# -- fields shared by several options classes (one help text each) -----------------------------
DTYPES = ("float16", "float32")
RESIZES = ("short", "full")
COMPRESSIONS = ("gzip", "lzf")
DECODERS = ("auto", "cpu", "gpu")  # anonfeat.video.decoders
ATTACKERS = ("mlp", "linear")  # anonfeat.probes.attackers
DEFAULT_FRAME_STRIDE = 4


def device_option() -> Any:
    return option("auto", "Compute device: auto (the first CUDA GPU when there is one, else the CPU), cpu, "
                          "cuda or cuda:N.", "-d", metavar="auto|cpu|cuda[:N]")


def progress_option() -> Any:
    return option(True, "Show progress on stderr (a bar on a terminal, a plain line every few seconds "
                        "otherwise); -q turns it off too.", "--progress/--no-progress")


def workers_option(default: int) -> Any:
    return option(default, "Decoding worker processes (0: decode in the main process).", "-w", min=0)


def encoder_option(default: str | None = None) -> Any:
    return option(default, "Registry name (see `anonfeat encoders`) or timm:<model>; inferred from --checkpoint "
                           "when omitted.", "-e")


CHECKPOINT_HELP = ("Official VideoMAE .pth, Hugging Face directory/.safetensors, mmaction2 .pth, a plain state dict, "
                   "or a Hugging Face id org/name[@revision] (cache first; HF_HOME, HF_HUB_OFFLINE apply). With "
                   "timm:<model>: a weights file, or `pretrained` for timm's own weights.")


def checkpoint_option() -> Any:
    return option(None, CHECKPOINT_HELP, "-c", cli_type=Path)


def decoder_option() -> Any:
    return option("auto", "Video decoding: cpu (PyAV), gpu (NVDEC; not in this build) or auto (gpu when the device "
                          "is CUDA and the gpu decoder is installed, else cpu).", choices=DECODERS)


def attributes_option(purpose: str = "Private attribute columns") -> Any:
    """--attributes A,B,C; the default set is labels.load_labels's: every 0/1 column but video, split
    and the tasks (columns of class names are left out and named by the audit)."""
    return option(None, f"{purpose} a,b,c (default: every 0/1 label column but video, split and tasks).",
                  cli_type=Optional[str], parse=comma_list, metavar="A,B,C")


def split_seed_option() -> Any:
    return option(0, "Seed of the train/attacker/test split (50/25/25, stratified on action) derived when the labels "
                     "have no split column; every command derives the same one from the same labels and seed. "
                     "Separate from --seed.")


def random_init_option() -> Any:
    return option(False, "Use seeded random weights (tests and demos only).")


def clip_len_option() -> Any:
    return option(None, "Frames per clip (default: the model's).", min=1)


def frame_stride_option(default_text: str = f"{DEFAULT_FRAME_STRIDE}") -> Any:
    return option(None, f"Sampling by frames: frames between a clip's frames (default {default_text}); excludes "
                        "--sample-fps.", min=1)


def sample_fps_option() -> Any:
    return option(None, "Sampling by time: frames per second of source time, so clips span the same seconds "
                        "whatever the video's frame rate; replaces --frame-stride, and --clip-stride then counts "
                        "sampled frames.", min=0.001)


def resize_option() -> Any:
    return option("short", "short: short side + centre crop; full: stretch the frame.", choices=RESIZES)


def check_sampling(options: Any) -> None:
    """--frame-stride and --sample-fps exclude each other (one line naming both)."""
    if options.frame_stride is not None and options.sample_fps is not None:
        raise AnonfeatError(f"--frame-stride {options.frame_stride} and --sample-fps {options.sample_fps:g} exclude "
                            "each other: sample by frames or by time, not both")


@dataclass
class ExtractOptions:
    """Flags of `anonfeat extract` (and, through PruneOptions, of `anonfeat prune`)."""

    encoder: str | None = encoder_option()
    checkpoint: str | Path | None = checkpoint_option()
    random_init: bool = random_init_option()
    clip_len: int | None = clip_len_option()
    frame_stride: int | None = frame_stride_option()
    sample_fps: float | None = sample_fps_option()
    clip_stride: int | None = option(None, "Sampled positions between clip starts (default: clip_len x "
                                           "frame_stride frames, or clip_len samples with --sample-fps).", min=1)
    num_clips: int | None = option(None, "N evenly spaced clips instead of sliding windows.", min=1)
    static_clips: int = option(0, "Also store N static clips per video (one frame repeated), needed by "
                                  "train-adapter and audit.", min=0)
    resize: str = resize_option()
    batch_size: int = option(16, "Clips per forward pass.", "-b", min=1)
    workers: int = workers_option(1)
    device: str = device_option()
    decoder: str = decoder_option()
    dtype: str = option("float16", "Stored feature precision.", choices=DTYPES)
    compression: str | None = option(None, "HDF5 compression of the features (default: none).",
                                     choices=COMPRESSIONS)
    progress: bool = progress_option()
    compile: bool | None = option(None, "torch.compile the encoder (default: on CUDA, where it is ~1.5x faster "
                                        "after ~30 s of compiling; off on the CPU).", "--compile/--no-compile")

    def validate(self) -> None:
        check_declared(self)
        check_sampling(self)
        if self.num_clips is not None and self.clip_stride is not None:
            raise AnonfeatError("--num-clips and --clip-stride exclude each other: choose one")


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height), both even and at least 16 (H.264 4:2:0)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise AnonfeatError(f"size {text!r}: write it as WIDTHxHEIGHT, e.g. 640x360") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise AnonfeatError(f"size {text!r}: width and height must be even and at least 16")
    return w, h


@dataclass
class BenchOptions:
    """Flags of `anonfeat bench`."""

    encoder: str = option("videomae-tiny", "Registry name or timm:<model>.", "-e")
    checkpoint: str | Path | None = option(None, "Weights to load (default: seeded random weights; speed does not "
                                                 "depend on them).", "-c", cli_type=Path)
    device: str = device_option()
    batch_size: int = option(16, "Clips per forward pass.", "-b", min=1)
    workers: int = workers_option(1)
    videos: int = option(8, "Generated videos in the throughput set.", "-n", min=1)
    frames: int = option(300, "Frames per generated video (at 30 fps; 10 s).", min=1)
    size: str = option("640x360", "WIDTHxHEIGHT of the throughput set.")
    fps: float = 30.0
    frame_stride: int = option(2, "Frames between a clip's frames.", min=1)
    clip_stride: int | None = option(None, "Frames between clip starts (default: clip_len x frame_stride / 4: "
                                           "dense, each frame in 4 clips).", min=1)
    repeats: int = option(3, "Rounds of measurements (interleaved); medians are reported.", min=1)
    naive_videos: int = option(2, "Videos the (slow) naive reference runs on.", min=1)
    long_seconds: float = option(600.0, "Length of the long video of the memory test.", min=1.0)
    short_seconds: float = option(10.0, "Length of the short video of the memory test.", min=0.1)
    long_size: str = option("1280x720", "WIDTHxHEIGHT of the memory-test videos.")
    skip_memory: bool = option(False, "Skip the peak-memory runs (quick checks).")
    cache_dir: str | Path | None = option(None, "Keep the generated videos here and reuse them.", cli_type=Path)
    threads: int | None = option(None, "torch threads of this process (default: torch's).", min=1)
    peak_tflops: float | None = option(None, "The GPU's bf16 peak (default: looked up by name).", min=0.0)
    compile: bool | None = option(None, "torch.compile the encoder (default: as extract, on CUDA only).",
                                  "--compile/--no-compile")
    decoder: str = option("auto", "Decoder of the decode-only, end-to-end and memory runs: cpu (PyAV), gpu "
                                  "(NVDEC; not in this build) or auto (gpu on CUDA when installed, else cpu).",
                          choices=DECODERS)

    def validate(self) -> None:
        check_declared(self)
        parse_size(self.size)
        parse_size(self.long_size)


@dataclass
class SynthOptions:
    """Flags of `anonfeat synth` (arguments of `anonfeat.synth.make_benchmark`)."""

    n_videos: int = option(60, "Number of videos.", "--videos", "-n", min=1)
    size: int = option(128, "Frame height and width in pixels.", min=16)
    n_frames: int = option(48, "Frames per video.", "--frames", min=1)
    fps: float = option(24.0, "Frame rate of the written videos.", min=1.0)
    seed: int = option(0, "Seed of the labels and of the rendered frames.")
    progress: bool = progress_option()

    def validate(self) -> None:
        check_declared(self)
