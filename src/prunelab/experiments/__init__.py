"""One module per reproduced claim or job: a config, run() -> results, figures and a report."""
