"""The pack on a host whose model folders are read-only: it starts with every node, renders, and the
one node that must write (the SimpleTuner linker) says what is wrong and what to do."""

import os
import shutil
import subprocess

import pytest
from conftest import TESTS
from helpers import sd3_txt2img

from tools.comfy_server import ComfyServer, PromptFailed, prepare_base
from tools.simpletuner_fixtures import tiny_example_run
from tools.tiny_models import model_dirs


def make_read_only(folder):
    """chmod for ordinary users; root ignores modes, so use the immutable flag there."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
    pytest.skip("cannot make a folder read-only here (root without chattr): `sudo apt-get install e2fsprogs`")


@pytest.fixture(scope="module")
def read_only_server(tmp_path_factory, tiny_models, server):
    base = tmp_path_factory.mktemp("readonly-host")
    undo = []
    for name in ("unet", "diffusion_models", "loras"):  # unet/ is the host's first diffusion_models folder
        d = base / "models" / name
        d.mkdir(parents=True)
        undo.append(make_read_only(d))
    cfg = prepare_base(base, model_dirs(tiny_models),
                       {"sd35wb_testnodes": TESTS / "testnodes"})
    # The linker links only under training roots (node, route and CLI alike): every tmp folder of this session.
    srv = ComfyServer(base, cfg, env={"SD35WB_TRAINING_ROOTS": str(tmp_path_factory.getbasetemp())}).start()
    yield srv, base
    srv.stop()
    for u in undo:
        u()


def test_read_only_models_folder(read_only_server, server, tiny_models, tmp_path):
    srv, base = read_only_server
    with pytest.raises(OSError):
        (base / "models" / "unet" / "probe").touch()
    ours = {k for k in srv.get_json("/object_info") if k.startswith("SD35WB_")}
    assert ours == {k for k in server.get_json("/object_info") if k.startswith("SD35WB_")}
    # Rendering is unaffected.
    assert srv.images(srv.run(sd3_txt2img(prefix="ro")))
    # The linker explains itself instead of failing deep inside.
    run = tiny_example_run(tmp_path / "run", tiny_models / "diffusion_models" / "tiny-sd35m.safetensors")
    prompt = {
        "1": {"class_type": "SD35WB_SimpleTunerLink", "inputs": {"output_dir": str(run), "run": "ro-run", "full": True,
                                                                  "ema": True, "lora": True, "final": True}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
    }
    with pytest.raises(PromptFailed) as e:
        srv.run(prompt)
    msg = e.value.error.get("exception_message", "")
    # It writes into diffusion_models/ (linker.destinations), never the legacy unet/ the host lists first.
    assert "read-only" in msg and str(base / "models" / "diffusion_models") in msg, msg
    assert not any((base / "models" / "unet").iterdir()) and not any((base / "models" / "diffusion_models").iterdir())
