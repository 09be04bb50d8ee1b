"""Streaming vision-language narration for ROS 2.

The streaming engine and the training code in this package never import rclpy; only the
node modules do. The generated interfaces live in ``svlm_ros.msg`` and ``svlm_ros.srv``
once the package is built with colcon.
"""

import os as _os
import sys as _sys


def _add_generated_interfaces() -> None:
    """Let a source checkout find the colcon-built ``msg``/``srv`` modules.

    Run from the repository root (``python -c ...``, ``python -m ...``), Python imports this
    source folder before the installed package, and the source has no generated interfaces.
    Then the installed ``svlm_ros`` folder (the next one on ``sys.path`` that has ``msg``) is
    appended to this package's search path, so ``svlm_ros.msg`` and ``svlm_ros.srv`` (and
    their type support libraries) come from the build while everything else comes from here.
    Nothing changes when this file is the installed one, or when nothing was built (the import
    of ``svlm_ros.msg`` then fails with a message that says what to do).
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.isdir(_os.path.join(here, "msg")):
        return  # the installed package: the interfaces are right here
    for entry in _sys.path:
        candidate = _os.path.join(_os.path.abspath(entry or _os.curdir), __name__)
        if candidate != here and _os.path.isfile(_os.path.join(candidate, "msg", "__init__.py")):
            __path__.append(candidate)
            return


class _MissingInterfaces:
    """Finds nothing; explains why ``svlm_ros.msg``/``svlm_ros.srv`` cannot be imported."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in (f"{__name__}.msg", f"{__name__}.srv"):
            raise ModuleNotFoundError(
                f"No module named {name!r}: the generated interfaces exist only in the colcon "
                "build, and none is on sys.path. Run `bash scripts/setup.sh`, then "
                "`source scripts/env.sh` (on a ROS install: colcon build, then source "
                "install/setup.bash).",
                name=name,
            )
        return None


_add_generated_interfaces()
if not any(_os.path.isdir(_os.path.join(folder, "msg")) for folder in __path__):
    # Last in the meta path: only consulted when the normal import found nothing.
    _sys.meta_path.append(_MissingInterfaces())
