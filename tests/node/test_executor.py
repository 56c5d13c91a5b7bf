"""node.runtime.executor / node.runtime.models: bit-identical outputs across thread counts, processes and CPU kernel
sets, training that learns, divergence that raises, and bad inputs rejected before compute.

The job matrix (every arch x every applicable profile) lives in `executor_jobs.py`, which also runs as a script
in the subprocesses below and prints a sha256 per output array.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import executor_jobs as ej

from marketplace.errors import SpecError
from marketplace.spec import parse_spec
from node.runtime.executor import PINNED_ENV, DivergedError, execute, kernels_pinned
from node.runtime.models import build_model, load_weights, state_dict_numpy

JOBS = ej.jobs()
ROOT = Path(__file__).resolve().parents[2]
_KERNEL_VARS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# name -> (extra environment, inference threads, runner options). "native" inherits this process's environment
# and runs every job; the kernel-set variants run the portable profiles (and what they compare besides).
VARIANTS: dict[str, tuple[dict[str, str], int, list[str]]] = {
    "native": ({}, 2, ["--values"]),
    "avx2-machine": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 1,
                     ["--profiles", "exact-f64,label", "--f32-inference", "--values"]),
    "pinned": (dict(PINNED_ENV), 1, ["--profiles", "exact-f64,label,pinned-f32"]),
    "pinned-b": ({**PINNED_ENV, "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 2, ["--profiles", "exact-f64,label,pinned-f32"]),
}


#: How far float32 outputs without a bit-identity promise may move between thread counts, runs or kernel sets
#: (relative and absolute): rounding differences of these tiny models are around 1e-6.
F32_RTOL, F32_ATOL = 1e-3, 1e-4


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """Names whose arrays differ in dtype, shape or any bit."""
    assert set(a) == set(b)
    return [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]


def _bit_identical_here(determinism: str) -> bool:
    """Whether a profile promises identical bits across thread counts in THIS process (README's determinism
    table): exact-f64 and label always; pinned-f32 only where the float32 kernels are pinned (PINNED_ENV set
    before torch started); none never."""
    return determinism in ("exact-f64", "label") or (determinism == "pinned-f32" and kernels_pinned())


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Same names, dtypes and shapes, values within the float32 bound."""
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_allclose(a[k], b[k], rtol=F32_RTOL, atol=F32_ATOL, err_msg=k)


# ---------------------------------------------------------------- one process: threads and repeat runs
@pytest.fixture(scope="module")
def in_process() -> dict[str, dict[str, np.ndarray]]:
    """Every job once in this process (inference / evaluate on 2 threads, training on 1)."""
    return {name: ej.run(name, job, threads=2) for name, job in JOBS.items()}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_repeat_and_thread_count_give_identical_bits(name: str, in_process: dict) -> None:
    """Profiles that promise it here give identical bits on 1 and 2 threads; the others stay within the float32
    bound. pinned-f32's promise holds in pinned workers: test_pinned_f32_identical_between_pinned_processes
    compares 1 and 2 threads there."""
    again = ej.run(name, JOBS[name], threads=1)  # training is pinned to 1 thread; inference now runs on 1 vs 2
    spec = JOBS[name][0]
    if _bit_identical_here(spec.determinism):
        assert not _same(in_process[name], again), f"{name}: outputs changed between runs / thread counts"
    else:
        _close(in_process[name], again)
    for key, arr in again.items():
        assert np.isfinite(arr).all() if arr.dtype.kind == "f" else True, key
    if spec.kind == "inference":
        assert set(again) == ({"labels"} if spec.determinism == "label" else {"logits"})
    elif spec.kind == "evaluate":
        assert {"loss", "accuracy"} <= set(again) and all(again[k].dtype == np.float32 for k in again)
    else:
        assert "loss_curve" in again and all(v.dtype == np.float32 for v in again.values())


# ---------------------------------------------------------------- separate processes and kernel sets
@pytest.fixture(scope="module")
def subprocess_digests() -> dict[str, dict]:
    """Run the whole matrix in one fresh python per variant (all started at once), parse their digests."""
    procs = {}
    for name, (extra, threads, options) in VARIANTS.items():
        env = {k: v for k, v in os.environ.items() if name == "native" or k not in _KERNEL_VARS}
        env.update(extra, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
        procs[name] = subprocess.Popen([sys.executable, str(ROOT / "tests/node/executor_jobs.py"),
                                        "--threads", str(threads), *options], env=env, cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{err[-3000:]}"
        results[name] = json.loads(out)
    return results


@pytest.mark.integration  # one python process per kernel-set variant
def test_separate_process_matches_in_process_for_every_profile(subprocess_digests: dict, in_process: dict) -> None:
    native = subprocess_digests["native"]["jobs"]
    diffs = {name: [k for k, arr in outs.items() if ej.digest(arr) != native[name][k]]
             for name, outs in in_process.items()}
    assert not {n: d for n, d in diffs.items() if d}


@pytest.mark.integration  # one python process per kernel-set variant
def test_exact_f64_and_label_identical_across_kernel_sets(subprocess_digests: dict) -> None:
    caps = {v: d["capability"] for v, d in subprocess_digests.items()}
    assert caps["pinned"] == "DEFAULT", caps
    portable = [n for n, (spec, _, _) in JOBS.items() if spec.determinism in ("exact-f64", "label")]
    assert len(portable) >= 4 * 4  # every arch: inference, label, evaluate, train / finetune
    ref = subprocess_digests["native"]["jobs"]
    bad = {(variant, n): [k for k in ref[n] if d["jobs"][n][k] != ref[n][k]]
           for variant, d in subprocess_digests.items() for n in portable}
    assert not {k: v for k, v in bad.items() if v}, f"capabilities {caps}"


@pytest.mark.integration  # one python process per kernel-set variant
def test_pinned_f32_identical_between_pinned_processes(subprocess_digests: dict) -> None:
    a, b = subprocess_digests["pinned"]["jobs"], subprocess_digests["pinned-b"]["jobs"]
    pinned = [n for n, (spec, _, _) in JOBS.items() if spec.determinism == "pinned-f32"]
    assert pinned and all(a[n] == b[n] for n in pinned)


@pytest.mark.integration  # one python process per kernel-set variant
def test_report_float32_drift_between_kernel_sets(subprocess_digests: dict) -> None:
    """Float32 inference on the native and the AVX2 kernel sets (unpinned): the bits may differ (reported), the
    values stay within the float32 bound; exact-f64 and label outputs of the same two processes are identical."""
    native, avx2 = subprocess_digests["native"], subprocess_digests["avx2-machine"]
    a, b = native["jobs"], avx2["jobs"]
    f32 = sorted(n for n in b if JOBS[n][0].determinism in ("none", "pinned-f32"))
    assert f32 and all(JOBS[n][0].kind == "inference" for n in f32)
    assert len(f32) == 2 * len(ej.arch_cases())  # every arch, both float32 profiles
    for n in f32:
        assert set(a[n]) == set(b[n]) == {"logits"}, n
        x, y = (np.asarray(d["values"][n]["logits"], dtype=np.float32) for d in (native, avx2))
        assert x.shape == y.shape and np.isfinite(x).all() and np.isfinite(y).all(), n
        np.testing.assert_allclose(x, y, rtol=F32_RTOL, atol=F32_ATOL, err_msg=n)
    portable = sorted(n for n in b if JOBS[n][0].determinism in ("exact-f64", "label"))
    assert portable and all(a[n] == b[n] for n in portable)
    drift = [n for n in f32 if a[n] != b[n]]
    print(f"\nfloat32 jobs differing native ({native['capability']}) vs avx2 ({avx2['capability']}): {drift}")


# ---------------------------------------------------------------- training behaviour
def _mlp_spec(**kw) -> object:
    model, _, _ = ej.arch_cases()["mlp"]
    d = {"kind": "train", "model": model, "data": {"inputs": ej.BLOB, "labels": ej.BLOB},
         "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 6, "epochs": 30}}
    d.update(kw)
    return parse_spec(d)


def test_training_lowers_loss_and_weights_round_trip() -> None:
    _, x, y = ej.arch_cases()["mlp"]
    data = {"inputs": x, "labels": {"y": y}}
    trained = execute(_mlp_spec(), data).outputs
    curve = trained.pop("loss_curve")
    assert curve.shape == (30 * 4,) and curve[-10:].mean() < 0.5 * curve[:4].mean()
    ev = {"kind": "evaluate", "training": None}
    before = execute(_mlp_spec(**ev), data).outputs
    after = execute(_mlp_spec(**ev, model={**_mlp_spec().model.model_dump(), "weights": ej.BLOB}), data,
                    weights=trained).outputs
    assert after["loss"] < before["loss"] and after["accuracy"] > before["accuracy"]


def test_steps_cap_and_order() -> None:
    _, x, y = ej.arch_cases()["mlp"]
    spec = _mlp_spec(training={"lr": 0.1, "batch_size": 5, "epochs": 2, "steps": 7, "order": ej.BLOB})
    order = np.stack([np.arange(24)[::-1], np.arange(24)])
    out = execute(spec, {"inputs": x, "labels": {"y": y}}, order=order).outputs
    assert out["loss_curve"].shape == (7,)  # 5 batches per epoch, capped at 7 steps


@pytest.mark.parametrize("profile", ["exact-f64", "none"])
def test_huge_learning_rate_raises_diverged(profile: str) -> None:
    _, x, _ = ej.arch_cases()["mlp"]
    targets = np.random.default_rng(1).standard_normal((24, 3)) * 10
    spec = _mlp_spec(determinism=profile, training={"lr": 1000, "batch_size": 24, "epochs": 500, "loss": "mse"})
    with pytest.raises(DivergedError, match=r"training diverged at step \d+: .*lower the learning rate"):
        execute(spec, {"inputs": x, "labels": {"y": targets}})


# ---------------------------------------------------------------- models: portable init, strict weights
#: sha256 over the per-tensor digests (sorted names) of mlp@1's portable initial weights for ej's mlp params.
MLP_INIT_SHA256 = "2adf773f097253210a2378c14632c5de8d4c412af54183f3755309ba48510dd8"

def test_initial_weights_are_portable_constants() -> None:
    model, _, _ = ej.arch_cases()["mlp"]
    w = state_dict_numpy(build_model(model["arch"], model["params"]))
    h = hashlib.sha256(b"".join(ej.digest(w[k]).encode() for k in sorted(w))).hexdigest()
    assert h == MLP_INIT_SHA256, "the portable initialisation changed: old spec hashes would name new weights"


def test_load_weights_is_strict() -> None:
    model, _, _ = ej.arch_cases()["mlp"]
    m = build_model(model["arch"], model["params"])
    w = state_dict_numpy(m)
    with pytest.raises(SpecError, match="missing.*layers.2.bias"):
        load_weights(m, {k: v for k, v in w.items() if k != "layers.2.bias"})
    with pytest.raises(SpecError, match="unexpected.*extra"):
        load_weights(m, {**w, "extra": w["layers.0.bias"]})
    with pytest.raises(SpecError, match="layers.0.weight.*shape"):
        load_weights(m, {**w, "layers.0.weight": w["layers.0.weight"].T})
    with pytest.raises(SpecError, match="dtype"):
        load_weights(m, {**w, "layers.0.bias": w["layers.0.bias"].astype(np.int64)})


def test_frozen_minilm_publishes_only_the_head() -> None:
    model, _, _ = ej.arch_cases()["minilm"]
    m = build_model(model["arch"], model["params"])
    head = state_dict_numpy(m)
    assert sorted(head) == ["head.bias", "head.weight"]
    head["head.weight"] = head["head.weight"] * 2
    load_weights(m, head)  # head-only weights keep the pretrained encoder
    assert np.array_equal(state_dict_numpy(m)["head.weight"], head["head.weight"])


def test_minilm_encoder_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    from node.runtime.minilm import model_dir

    model, x, _ = ej.arch_cases()["minilm"]
    m = build_model(model["arch"], model["params"])
    with torch.no_grad():
        mine = m.embed(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"])).numpy()
    ref_model = st.SentenceTransformer(str(model_dir()), device="cpu")
    feats = {"input_ids": torch.from_numpy(x["input_ids"]), "attention_mask": torch.from_numpy(x["attention_mask"]),
             "token_type_ids": torch.zeros_like(torch.from_numpy(x["input_ids"]))}
    with torch.no_grad():
        ref = ref_model(feats)["sentence_embedding"].numpy()
    assert np.abs(mine - ref).max() < 1e-5


# ---------------------------------------------------------------- bad inputs
def _inference(arch: str, **kw) -> object:
    model, _, _ = ej.arch_cases()[arch]
    return parse_spec({"kind": "inference", "model": model, "data": {"inputs": ej.BLOB}, **kw})


@pytest.mark.parametrize("arch,tensors,match", [
    ("mlp", {"x": np.zeros((3, 5), np.float32)}, r"expected \[N, 6\]"),
    ("mlp", {"x": np.zeros((3, 6), np.int64)}, "dtype int64, expected a float"),
    ("mlp", {"x": np.zeros((3,), np.float32)}, "expected rank 2"),
    ("mlp", {"features": np.zeros((3, 6), np.float32)}, r"exactly \['x'\]"),
    ("mlp", {"x": np.full((3, 6), np.nan, np.float32)}, "NaN"),
    ("cnn", {"x": np.zeros((2, 2, 9, 9), np.float32)}, "image_size"),
    ("transformer", {"input_ids": np.full((2, 4), 50)}, "vocab_size 50"),
    ("transformer", {"input_ids": np.zeros((2, 13), np.int64)}, "max_len"),
    ("transformer", {"input_ids": np.zeros((2, 4), np.float32)}, "expected an int"),
    ("minilm", {"input_ids": ej.MINILM_IDS, "attention_mask": ej.MINILM_MASK[:, :8]}, "attention_mask has shape"),
    ("minilm", {"input_ids": ej.MINILM_IDS + 30522, "attention_mask": ej.MINILM_MASK}, "vocab_size 30522"),
])
def test_bad_inputs_raise_spec_error(arch: str, tensors: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        execute(_inference(arch), {"inputs": tensors})


def test_bad_labels_order_and_options_raise_spec_error() -> None:
    _, x, y = ej.arch_cases()["mlp"]
    train = _mlp_spec()
    with pytest.raises(SpecError, match="needs `labels`"):
        execute(train, {"inputs": x})
    with pytest.raises(SpecError, match="24 samples"):
        execute(train, {"inputs": x, "labels": {"y": y[:-1]}})
    with pytest.raises(SpecError, match="expected int64"):
        execute(train, {"inputs": x, "labels": {"y": y.astype(np.float32)}})
    with pytest.raises(SpecError, match="classes in"):
        execute(train, {"inputs": x, "labels": {"y": y + 3}})
    with pytest.raises(SpecError, match="no training.order"):
        execute(train, {"inputs": x, "labels": {"y": y}}, order=np.zeros((30, 24), np.int64))
    ordered = _mlp_spec(training={"lr": 0.1, "batch_size": 5, "epochs": 2, "order": ej.BLOB})
    with pytest.raises(SpecError, match=r"expected int64 \[2, 24\]"):
        execute(ordered, {"inputs": x, "labels": {"y": y}}, order=np.zeros((1, 24), np.int64))
    with pytest.raises(SpecError, match="top_k 4 exceeds"):
        execute(_inference("mlp", determinism="label", top_k=4), {"inputs": x})
    with pytest.raises(SpecError, match="spec names weights"):
        execute(_mlp_spec(kind="finetune", model={**train.model.model_dump(), "weights": ej.BLOB}),
                {"inputs": x, "labels": {"y": y}})


@pytest.mark.skipif(kernels_pinned(), reason="this process runs pinned kernels")
def test_pinned_profile_reports_or_refuses_unpinned_kernels() -> None:
    _, x, _ = ej.arch_cases()["mlp"]
    spec = _inference("mlp", determinism="pinned-f32")
    assert "without pinned kernels" in execute(spec, {"inputs": x}).warnings[0]
    with pytest.raises(SpecError, match="without pinned kernels"):
        execute(spec, {"inputs": x}, require_pinned=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_job_without_cuda_raises() -> None:
    _, x, _ = ej.arch_cases()["mlp"]
    with pytest.raises(SpecError, match="needs cuda"):
        execute(_inference("mlp", device={"type": "cuda"}), {"inputs": x})


def test_top_k_breaks_ties_by_lowest_index_and_evaluate_mse() -> None:
    from node.runtime.compute import top_k

    scores = np.array([[1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0]])
    assert top_k(scores, 3).tolist() == [[1, 2, 0], [0, 1, 2]]
    _, x, _ = ej.arch_cases()["mlp"]
    spec = _mlp_spec(kind="evaluate", training=None)
    out = execute(spec, {"inputs": x, "labels": {"y": np.zeros((24, 3), np.float32)}}).outputs
    assert set(out) == {"loss"} and out["loss"].dtype == np.float32 and out["loss"].shape == ()
