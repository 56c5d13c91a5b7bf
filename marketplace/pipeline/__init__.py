"""Low-code pipelines over the market: a YAML DAG of job stages, validated before any money moves, run with
one requester, resumable after a crash without paying twice. See docs/pipelines.md.

`load_pipeline` / `parse_pipeline` read a file, `validate` lists every problem, `run_pipeline` (trio) and
`run_pipeline_sync` run it and return a `PipelineReport`; `PipelineState` is the durable record of a run.
No torch and no chain access outside the runner.
"""

from marketplace.errors import PipelineChangedError, PipelineError, PipelineInvalidError
from marketplace.pipeline.model import (
    REF_RE,
    Pipeline,
    Ref,
    Stage,
    find_cycle,
    load_pipeline,
    parse_pipeline,
)
from marketplace.pipeline.runner import (
    PipelineReport,
    StageEvent,
    StageReport,
    prepare,
    report_of,
    run_pipeline,
    run_pipeline_sync,
    split_outputs,
)
from marketplace.pipeline.state import (
    Budget,
    PipelineState,
    StageRecord,
    default_state_dir,
    fits_budget,
)
from marketplace.pipeline.validate import read_header, stage_outputs, validate

__all__ = [
    "REF_RE", "Budget", "Pipeline", "PipelineChangedError", "PipelineError", "PipelineInvalidError",
    "PipelineReport", "PipelineState", "Ref", "Stage", "StageEvent", "StageRecord", "StageReport",
    "default_state_dir", "find_cycle", "fits_budget", "load_pipeline", "parse_pipeline", "prepare", "read_header",
    "report_of", "run_pipeline", "run_pipeline_sync", "split_outputs", "stage_outputs", "validate",
]
