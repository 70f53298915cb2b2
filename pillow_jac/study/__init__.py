"""The paper's questions answered by this code: ablations of the mbt2018 model at an equal budget.

``python -m pillow_jac.study`` trains every variant of :mod:`pillow_jac.study.variants` from scratch
with the same budget (:data:`~pillow_jac.study.variants.BUDGET`), freezes each into a real decoder
generation, codes Kodak and urban20 with it, and writes ``benchmarks/results/study.{json,md,png}``
(docs/study.md reads them). Each run's result is kept in ``benchmarks/results/study/measured/`` as it
is measured, so an interrupted study resumes where it stopped.
"""
