"""`python -m benchmarks.profile_models --smoke` runs and its op profiles attribute XLA thunks to HLO kinds, for a
one-stage encoder (peer MONAI) and a two-stage model (peer PyTorch + timm).

No timing is asserted: only that the trace is parsed (thunks matched to instructions of the compiled step),
the kinds are the documented ones, and the tables are written.
"""

import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import profile_models  # noqa: E402


def test_hlo_kinds_of_a_compiled_program():
    def f(a, b, q, x, k):
        dense = a @ b
        batched = jnp.einsum("bij,bkj->bik", q, q)
        conv = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")
        return dense.sum() + batched.sum() + conv.sum()

    args = (jnp.ones((8, 8)), jnp.ones((8, 8)), jnp.ones((4, 8, 16)), jnp.ones((1, 2, 8, 8)), jnp.ones((3, 2, 3, 3)))
    instructions, computations = profile_models._hlo_index(jax.jit(f).lower(*args).compile().as_text())
    kinds = {profile_models._hlo_kind(name, instructions, computations) for name in instructions}
    assert {"dense matmul", "batched matmul", "convolution"} <= kinds
    assert kinds <= set(profile_models.KINDS)


def _installed(*names: str) -> bool:
    return all(importlib.util.find_spec(n) is not None for n in names)


def test_smoke_run_writes_profiles_and_component_table(tmp_path):
    profile_models.main(["--smoke", "--models", "vit,localiser", "--steps", "inference", "--out", str(tmp_path)])
    with open(tmp_path / "profile_models.json") as f:
        results = json.load(f)
    vit, localiser = results["profiles"]
    assert (vit["model"], vit["step"]) == ("vit_cpu", "inference")
    assert localiser["model"].startswith("localiser (") and localiser["step"] == "inference"
    for profile in (vit, localiser):
        ops = profile["lumbar_jax"]["ops"]
        assert ops and all(o["kind"] in profile_models.KINDS for o in ops)
        matched = sum(o["seconds"] for o in ops if o["shape"] != "?")
        assert matched > 0.5 * sum(o["seconds"] for o in ops)  # thunks found in the compiled step's HLO
    assert {"dense matmul", "batched matmul"} <= {o["kind"] for o in vit["lumbar_jax"]["ops"]}
    monai, timm = _installed("torch", "monai"), _installed("torch", "timm")
    assert ("peer" in vit) == monai and vit["peer_name"] == "MONAI"
    assert ("peer" in localiser) == timm and localiser["peer_name"].startswith("PyTorch + timm")
    if timm:
        assert "convolution" in {o["kind"] for o in localiser["peer"]["ops"]}
    components = results["components"]
    assert len(components) == 8 and all(r["lumbar_jax_ms"] > 0 for r in components)
    assert all((r["monai_ms"] is not None) == monai for r in components)
    assert "## ViT block components" in (tmp_path / "profile_models.md").read_text()
