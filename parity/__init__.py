"""Parity with mergekit: the same mergekit YAMLs merged by mergekit 0.1.5 and by mixmerge, compared tensor by
tensor (``make parity``; mergekit lives in its own venv, ``.venv-parity``, and is no part of ``make test``).

``cases.py`` is the case list (data: add a row when a method or YAML feature lands), ``classify.py`` the pure
verdict on a pair of results, ``models.py`` the seeded random models, ``mergekit_driver.py`` the one process
that runs mergekit's own ``mergekit-yaml`` command for every case, ``run.py`` the orchestration and the table.
"""
