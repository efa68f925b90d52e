"""The edge packages must work on a device where torch is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_edge_runs_with_torch_unimportable(tiny_bundle):
    script = textwrap.dedent(f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ImportError(f"{{name}} is not installed on this device")

        sys.meta_path.insert(0, NoTorch())
        import pkgutil, importlib
        import sortline.edge_runtime, sortline.hardware
        for pkg in (sortline.edge_runtime, sortline.hardware):
            for mod in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{{pkg.__name__}}.{{mod.name}}")
        from sortline.edge_runtime.cli import main
        from sortline.edge_runtime.model.pipeline import ItemPipeline
        from sortline.hardware.sim.avocado import make_fruit, render_views, tap_series
        from sortline.hardware.camera import ItemCapture
        pipeline = ItemPipeline.from_path({str(tiny_bundle.root)!r})
        fruit = make_fruit(1, seed=0)
        decision = pipeline.classify(ItemCapture(1, tuple(render_views(fruit))), tap_series(fruit))
        assert decision.label is not None
        assert main(["bundle", "verify", {str(tiny_bundle.root)!r}]) == 0
        assert not any(m.split(".")[0] in ("torch", "torchvision") for m in sys.modules)
        print("edge ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "edge ok" in result.stdout
