"""The one device resolver: 'auto' without importing torch for stand-ins, clear errors otherwise."""
import json
import subprocess
import sys

import pytest

from openmask3d_ros.core.device import resolve_device


def test_auto_for_standins_imports_no_torch():
    code = ("import json, sys\n"
            "from openmask3d_ros.core.device import resolve_device\n"
            "d = resolve_device('auto', needs_torch=False)\n"
            "print(json.dumps([d, resolve_device('cpu'), 'torch' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert json.loads(out) == ["cpu", "cpu", False]


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="'gpu'"):
        resolve_device("gpu")


def test_models_share_the_resolver_when_there_is_no_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda:0")
    # the model wrappers refuse an unusable GPU before reading any checkpoint
    from openmask3d_ros.core.encoders.clip import ClipEncoder
    from openmask3d_ros.core.segmenters.sam import SamSegmenter
    missing = str(tmp_path / "none.pt")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        ClipEncoder("ViT-B-32", checkpoint=missing, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        SamSegmenter("vit_b", checkpoint=missing, device="cuda")
