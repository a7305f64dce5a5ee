"""The report's studies, one declaration each (:class:`dynrcnn.report.study.Study`, the module's
``STUDY``): ``record`` (the report of record, ``make report``), ``controls`` (``make
report-controls``), ``mmdet`` (``make mmdet``). A new study is one more module here plus its
notebook; ``dynrcnn study NAME`` runs it (:func:`dynrcnn.report.study.run_study`)."""
