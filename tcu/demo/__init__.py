"""``tcu demo``: the simulator, the agent and the ingest as separate processes on loopback."""

from tcu.demo.run import DemoOptions, DemoResult, run_demo
from tcu.demo.verify import Expected, expected_samples, verify_store

__all__ = ["DemoOptions", "DemoResult", "Expected", "expected_samples", "run_demo", "verify_store"]
