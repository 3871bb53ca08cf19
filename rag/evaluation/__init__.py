"""The evaluation harness (``rag eval``): retrieval and answer quality on question sets, reports, a CI gate.

A question set is either the hand-built JSONL set over the seed pages (``eval/questions.jsonl``)
or a SQuAD-format reading-comprehension file (CMRC 2018, DRCD) whose paragraphs become the
documents of a separate index. Every question goes through the same code the service runs:
:meth:`rag.retrieval.Retriever.search` for retrieval and :meth:`rag.answer.Answerer.answer`
for answers. ``eval/README.md`` describes the sets, the metrics and how to read a report.

One job per module, in the order data flows through them:

``sets``
    Question sets: :class:`~rag.evaluation.sets.EvalQuestion` / ``EvalSet``, the JSONL and
    SQuAD loaders, where the benchmarks live.
``relevance``
    :class:`~rag.evaluation.relevance.RelevanceJudge`: which chunks count as the right one.
``metrics``
    Pure metric functions: CMRC 2018 F1/EM, ranx retrieval metrics, abstention, percentiles.
``indexes``
    The cached eval index of each set (keyed by :func:`rag.index.settings_fingerprint`).
``runs``
    Questions through ``Retriever.search`` and ``Answerer.answer``, each result scored.
``pipeline``
    One set end to end (every retrieval configuration, answers, follow-ups), a whole run.
``report``
    The typed report (``EvalReport`` -> ``SetReport`` -> ...), its JSON, every metric name.
``gate``
    ``eval/thresholds.toml`` parsed and checked against a run's metrics.
``plots`` / ``render``
    PNG plots; Markdown, HTML (``templates/report.html.jinja2``), terminal tables, the report folder.
``command``
    ``rag eval`` without the command line: which sets and modes, the gate, where reports go.

Nothing here reads the environment: the CLI (:mod:`rag.cli`) turns options and their
``RAG_EVAL_*`` variables into arguments.
"""
