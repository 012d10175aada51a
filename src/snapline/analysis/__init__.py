"""Analysis of runs: protocol comparison, optimal checkpoint interval, space-time diagrams.

* ``interval`` -- Young's and Daly's optimal intervals and Daly's expected-wall-time model.
* ``trace_view`` -- a checked, typed view of a trace (read files with
  ``snapline.runtime.trace.load_trace``); ``metrics`` -- what a run cost, from its trace.
* ``spacetime`` (layout) and ``spacetime_plot`` (matplotlib) -- the space-time diagram;
  ``html`` -- the self-contained HTML page.
* ``compare`` -- ``compare(ComparisonConfig) -> ComparisonResult``: every protocol on one job
  and one crash schedule; ``compare_report`` and ``charts`` -- its table and chart.

Modules are imported on use; matplotlib is loaded only by the drawing modules.
"""
