"""A corpus of hospital-shaped brain MRI studies, each with what the application must do with it.

``vendors`` holds the series names scanners write (Siemens, GE, Philips; English, German, French,
Spanish, Italian, Dutch); ``encodings`` re-encodes written series (transfer syntaxes with dcmtk and
pydicom, multi-frame with highdicom) and corrupts them; ``layouts`` arranges a study as a patient CD
or an export; ``cases`` lists the studies and their expectations; ``checks`` runs ``python -m app``
on one case and judges the outcome; ``runner`` is ``python -m app.corpus``, which prints the table.
"""
