"""Human audit of MedGround output: sample records, review them in a browser, report reliability.

The loop has three steps. ``mgr audit sample`` writes an audit pack with rendered images
and a static review page. Reviewers decide each item in ``index.html`` or in Label Studio.
``mgr audit report`` then turns the downloaded decisions into accuracy with Wilson
intervals, error types, Cohen's kappa and the estimated false-rejection rate.
"""
