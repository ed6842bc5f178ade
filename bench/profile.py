"""`make bench-profile`: Nsight Compute on the project's kernels (the logic is in nsight.py).

    python bench/profile.py [--out-dir DIR] [--quick] [--launch-count N] [--kernels REGEX]

This file shares its name with the standard library's ``profile`` module, and ``bench/`` is
on ``sys.path`` for the benchmark (the Makefile puts it on PYTHONPATH, and a script's own
folder is always first). ``cProfile`` -- imported by torch._dynamo -- does ``import profile``;
when that import lands here, this module hands over to the real standard-library module so
nothing else changes behaviour.
"""

if __name__ == "profile":  # imported as the stdlib module's name: become that module
    import importlib.util as _ilu
    import os as _os
    import sys as _sys
    import sysconfig as _sc

    _path = _os.path.join(_sc.get_paths()["stdlib"], "profile.py")
    _spec = _ilu.spec_from_file_location("profile", _path)
    _mod = _ilu.module_from_spec(_spec)
    _sys.modules["profile"] = _mod
    _spec.loader.exec_module(_mod)
    globals().update({k: v for k, v in vars(_mod).items()
                      if k not in ("__name__", "__spec__", "__loader__")})
else:
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.abspath(__file__))
    if _here not in _sys.path:
        _sys.path.insert(0, _here)
    from nsight import main  # noqa: E402

    if __name__ == "__main__":
        _sys.exit(main())
