"""The GPU benchmark's section, run on the CPU with tiny shapes (``--smoke``) so that it keeps working.

No GPU here: the real shapes, the bandwidth floor against CUDA and vLLM run
only on a GPU machine; this runs every step of the section on the tiny Llama,
with the stand-in engine in vLLM's place, through the same command line.
"""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import main


def test_gpu_section_smoke_runs_every_step(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    assert main(["--sections", "gpu", "--smoke", "--output", str(output)]) == 0
    rows = [line for line in output.read_text(encoding="utf-8").splitlines() if line.startswith("| 5")]
    loop = [r for r in rows if r.startswith("| 5a.")]
    assert [("batch 1" in r, "batch 2" in r) for r in loop] == [(True, False), (False, True)]
    assert all("tok/s" in r and "generate():" in r and "floor" in r for r in loop)
    assert len([r for r in rows if r.startswith("| 5b.") and "stand-in" in r]) == 2
    seeded = [r for r in rows if r.startswith("| 5c.")]
    assert len(seeded) == 2 and all("| same |" in r for r in seeded)
    assert any(r.startswith("| 5d.") and "estimate" in r for r in rows)
