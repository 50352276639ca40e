"""Export records to VLM training formats and read predictions back for evaluation.

``formats`` contains one writer per training format, ``markup`` the box text of each model
family, ``predictions`` the readers ``mgr eval`` uses, and ``cli`` the ``mgr export``
command.
"""
