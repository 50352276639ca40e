"""Human audit of MedGround output: sample records, review them in a browser, report reliability.

The loop is ``mgr audit sample`` (an audit pack with rendered images and a static review
page), review in ``index.html`` or in Label Studio, then ``mgr audit report`` on the
downloaded decisions (accuracy with Wilson intervals, error types, Cohen's kappa and the
estimated false-rejection rate).
"""
