"""Security: the local Ray cluster listens on loopback only with its dashboard (and so the job API) off, and no
code path unpickles data from outside the cluster: `torch.load` runs with weights_only=True and checkpoint
metadata is checked against an allow-list. Custom reward code runs only from reward.custom_function, under a
time limit (tests/unit/test_verifiers.py, counted in the suite summary)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import psutil
import pytest
import ray

from sfpo_rl.controller import init_ray
from sfpo_rl.workers.checkpoint import SafeFileSystemReader

PACKAGE = Path(__file__).resolve().parents[2] / "sfpo_rl"
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
# Files that unpickle only what their own child processes just wrote into a private temporary directory.
TRUSTED_LOADERS = {"bench/ranks.py"}


@pytest.fixture
def fresh_local_ray():
    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only_with_the_dashboard_off(fresh_local_ray):
    me = psutil.Process()
    listening = [
        (proc.name(), conn.laddr)
        for proc in [me, *me.children(recursive=True)]
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert any(name == "gcs_server" for name, _ in listening)  # the check sees Ray's servers
    assert all(addr.ip in LOOPBACK for _, addr in listening), listening
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    # No dashboard HTTP server, so no job submission API either.
    assert not ray._private.worker.global_worker.node.address_info.get("webui_url")


def _unsafe_loads(path: Path) -> list[str]:
    """Calls in a source file that can unpickle: pickle/cloudpickle load(s), torch.load without
    weights_only=True, numpy load with allow_pickle=True, pandas read_pickle."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if (
            name.endswith(("pickle.load", "pickle.loads", "read_pickle"))
            or (name == "torch.load" and keywords.get("weights_only") != "True")
            or (name.endswith("np.load") and keywords.get("allow_pickle") == "True")
        ):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_pickle_based_loading_of_outside_data():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _unsafe_loads(path)]
    unexpected = [hit for hit in found if hit.split(":")[0] not in TRUSTED_LOADERS]
    assert not unexpected, "\n".join(unexpected)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_metadata_naming_other_code_is_refused(tmp_path, faults):
    with faults.bad_input("checkpoint metadata carrying a pickled call"):
        dcp_dir = tmp_path / "dcp"
        dcp_dir.mkdir()
        marker = tmp_path / "payload_ran"
        (dcp_dir / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
        with pytest.raises(ValueError, match=r"global 'pathlib\.Path\.touch' is not allowed"):
            SafeFileSystemReader(dcp_dir).read_metadata()
        assert not marker.exists()
