"""One module per verb: ``train``, ``test``, ``predict``, ``export``, ``optimize``, ``benchmark``.

Each verb module has ``run(ctx, run, ...)`` that does the work in a run folder and returns a
typed result (``otx.results``). What they share lives beside them: ``context`` (the settings a
verb runs with and the run-folder plumbing), ``resolve`` (a model from a checkpoint or an
exported file, and the data to evaluate it on, as values) and ``inference`` (batches through a
scorer, predictions, metrics). Console output is ``otx.render``'s job. ``otx.engine.Engine`` is
the facade that checks arguments and calls them.
"""
