"""Usage accounting: records of ended executions, their totals, the nodes' reliability."""
