"""The narrator node: lifecycle and wiring. Camera topics in, narrations and answers out.

A thin ROS edge over the streaming engine (``svlm_ros.engine``): this module declares the
parameters (``parameters.py`` holds their table and checks), builds the parts and moves them
through the lifecycle; the parts do the work:

* ``streams.Streams``: the loaded model, one engine session per camera, the model lock;
* ``camera_intake.CameraIntake``: image subscriptions, frames offered to the streams;
* ``narration_worker.NarrationWorker``: the thread that runs rounds and publishes narrations;
* ``ask_service.AskService``: the ``ask`` service and the ``answer`` topic;
* ``status_reporter.StatusReporter``: ``status`` and ``/diagnostics``.

Names (all relative; the node's default namespace is ``/svlm``, so with no remapping):
``/svlm/narrator``; publishes ``narration`` (``svlm_ros/Narration``), ``narration_text``
(``std_msgs/String``, silent seconds left out), ``answer`` (``svlm_ros/Answer``), ``events``
(``svlm_ros/WatchEvent``: the watch questions' answers, ``watcher.py``), ``status``
(``svlm_ros/NarratorStatus``) and ``/diagnostics``; serves ``ask`` (``svlm_ros/srv/Ask``);
subscribes to each entry of ``camera_topics``.

Lifecycle: configure loads the model and subscribes, activate starts narrating, deactivate
pauses (frames are then ignored, asks refused), cleanup unloads the model and frees GPU memory.
With ``autostart`` (the default) the node configures and activates itself.

The model's own settings: at configure the node reads ``svlm_settings.json`` from
``model_path`` when the model has one (``svlm-export`` writes it: the fps, pixels, windows
and prompts the model was trained with, and its conversation format) and takes its values as
the defaults of the parameters of the same names. A parameter given explicitly (params file,
``-p``, launch file, or set by a user before configure) keeps its value, with a warning when
it differs from the file's; a model trained on another format than the engine renders gets a
warning to retrain it.

Threads and the one model: image callbacks (one mutually exclusive callback group per
camera), the ask service (its own group), the status timer (its own group) and parameter and
lifecycle services run on a multi-threaded executor; the narration worker is a thread of its
own, and all model work runs on it (rounds, stream rebuilds, and the asks the ask service
hands it): an ask waits at most for the round in progress, and narration is delayed by at most
one answer between two rounds.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
from typing import Any

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from svlm_ros.engine import model_settings
from svlm_ros.node import exit_watchdog
from svlm_ros.node import parameters as narrator_params
from svlm_ros.node.ask_service import AskService
from svlm_ros.node.camera_intake import CameraIntake
from svlm_ros.node.model_defaults import model_defaults
from svlm_ros.node.narration_worker import NarrationWorker
from svlm_ros.node.status_reporter import StatusReporter
from svlm_ros.node.steady_executor import SteadyMultiThreadedExecutor
from svlm_ros.node.streams import Streams

NODE_NAME = "narrator"
DEFAULT_NAMESPACE = "/svlm"
# From the start of shutdown to a forced exit (exit_watchdog): the README promises 5 s.
EXIT_DEADLINE_SECONDS = 4.5
# The longest the main thread waits for ROS work before it looks at Python's signals again.
SPIN_WAKE_SECONDS = 0.5


class NarratorNode(LifecycleNode):
    """Narrates every camera of ``camera_topics`` once per ``period`` and answers ``ask``.

    Raises:
        ValueError: the parameters (from files, the command line or launch) cannot run; the
            message lists every reason.
        rclpy.exceptions.ParameterException: a value has the wrong type or is out of range.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("namespace", DEFAULT_NAMESPACE)
        super().__init__(NODE_NAME, **kwargs)
        # Parameters a model's svlm_settings.json may set that were given explicitly (params
        # file, command line, launch, or set later by a user): these keep their value.
        self._given: set[str] = set()
        # Set while the node itself sets parameters (model settings, restores): those
        # changes are not the user's.
        self._own_changes = threading.local()
        self._values = self._declare_parameters()
        found = narrator_params.problems(self._values)
        if found:
            raise ValueError("; ".join(found))
        self._closed = False
        self._streams = Streams(self._values, self.get_logger())
        self._worker = NarrationWorker(
            self, self._streams, self._values, self._restore_stream_parameters
        )
        self._intake = CameraIntake(self, self._streams, self._values, self._worker.wake)
        self._asks = AskService(self, self._streams, self._values, self.lifecycle_state,
                                self._worker.jobs.submit, self._worker.held_questions,
                                self._worker.wake)
        self._status = StatusReporter(
            self, self._streams, self._asks, self._values, self.lifecycle_state
        )
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        names = ", ".join(
            f"{c.spec.name} <- {c.spec.subscription_topic}" for c in self._streams.cameras
        )
        self.get_logger().info(f"cameras: {names}; serving {self.resolve_service_name('ask')}")

    # ----- parameters --------------------------------------------------------------------
    def _declare_parameters(self) -> dict[str, Any]:
        for spec in narrator_params.PARAMETERS:
            if spec.default == [] or spec.name in narrator_params.MODEL_SETTING_PARAMETERS:
                if self._declare_by_type(spec):
                    self._given.add(spec.name)
            else:
                self.declare_parameter(spec.name, spec.default, spec.descriptor())
        values = {spec.name: self.get_parameter(spec.name).value
                  for spec in narrator_params.PARAMETERS}
        for name, value in values.items():
            if isinstance(value, tuple):
                values[name] = list(value)
        return values

    def _declare_by_type(self, spec: narrator_params.ParameterSpec) -> bool:
        """Declare a parameter by its type, then give it its default unless an override (a
        params file, ``-p``, a launch file) set it; True when one did.

        rclpy takes a parameter's type from its default, and ``[]`` has none (a YAML ``[]``
        arrives without a type too); and a parameter declared with a default cannot tell an
        override from that default, which the parameters a model's settings file gives must
        (an explicit value wins over the file). So declare it by type, writable; a parameter
        that no override set is then uninitialized: give it its default; then make it
        read-only if it is.
        """
        descriptor = spec.descriptor()
        descriptor.read_only = False
        types = {"bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER,
                 "double": Parameter.Type.DOUBLE, "string": Parameter.Type.STRING,
                 "string[]": Parameter.Type.STRING_ARRAY}
        self.declare_parameter(spec.name, types[spec.type_name], descriptor)
        try:
            self.get_parameter(spec.name)
            given = True
        except ParameterUninitializedException:
            given = False
            default = Parameter(spec.name, types[spec.type_name], spec.default)
            result = self.set_parameters([default])[0]
            if not result.successful:
                raise ValueError(f"{spec.name}: {result.reason}") from None
        if spec.read_only:
            self.set_descriptor(spec.name, spec.descriptor())
        return given

    @contextlib.contextmanager
    def _setting_own_parameters(self):
        """Parameters set inside are the node's own doing, not a user's choice."""
        self._own_changes.active = True
        try:
            yield
        finally:
            self._own_changes.active = False

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """On-set callback: refuse a change that breaks any rule, with every reason."""
        candidate = dict(self._values)
        for parameter in parameters:
            if parameter.name not in candidate:
                continue  # use_sim_time and the like are rclpy's
            if parameter.type_ == Parameter.Type.NOT_SET:
                return SetParametersResult(
                    successful=False, reason=f"{parameter.name} cannot be undeclared"
                )
            value = parameter.value
            candidate[parameter.name] = list(value) if isinstance(value, tuple) else value
        found = narrator_params.problems(candidate, temporal_patch=self._streams.temporal_patch)
        if found:
            return SetParametersResult(successful=False, reason="; ".join(found))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        """Post-set callback: remember the values; rebuild the streams when they changed."""
        changed = []
        own = getattr(self._own_changes, "active", False)
        for parameter in parameters:
            if parameter.name in self._values:
                value = parameter.value
                self._values[parameter.name] = list(value) if isinstance(value, tuple) else value
                changed.append(parameter.name)
                if not own and parameter.name in narrator_params.MODEL_SETTING_PARAMETERS:
                    self._given.add(parameter.name)  # a user's choice: it outranks the model's
        restarting = sorted(set(changed) & narrator_params.STREAM_PARAMETERS)
        streams = self._streams
        if not restarting or streams.loaded is None:
            return
        if narrator_params.stream_config(self._values) == streams.config:
            return  # e.g. the previous values put back after a failed rebuild
        # The worker rebuilds: this callback runs in the parameter service, which must not
        # wait for the model lock (behind a round and queued asks), nor hold up the lifecycle
        # services that share its callback group.
        self._worker.request_rebuild(f"parameters changed: {', '.join(restarting)}")

    def _restore_stream_parameters(self, error: Exception) -> None:
        """Put back the stream parameter values the running streams were built from."""
        running = self._streams.config_values
        restore = [
            Parameter(name, value=value)
            for name, value in running.items()
            if self._values.get(name) != value
        ]
        if restore:
            # Atomically: set one by one, the first value put back makes a config that matches
            # neither set of streams and asks for another rebuild, which would wipe the
            # restored streams' memory and clear the error before anyone could read it.
            with self._setting_own_parameters():
                result = self.set_parameters_atomically(restore)
            if not result.successful:
                self.get_logger().error(f"could not restore parameters: {result.reason}")

    # ----- lifecycle ---------------------------------------------------------------------
    @property
    def autostart(self) -> bool:
        """Whether the node configures and activates itself at start-up."""
        return bool(self._values["autostart"])

    @property
    def executor_threads(self) -> int:
        """Threads the executor needs: one per camera, asks, status, parameters/lifecycle."""
        return self._intake.callback_groups + 3

    def lifecycle_state(self) -> str:
        """``unconfigured``, ``inactive``, ``active``, ``finalized`` (or a transition state)."""
        return self._state_machine.current_state[1]

    def start(self) -> bool:
        """Configure and activate (what ``autostart`` does); True when active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._streams.error = ""
        try:
            self._adopt_model_settings()
            self._streams.load()
        except Exception as error:  # noqa: BLE001 - any load failure is a refused configure
            self._streams.error = f"configure failed: {error}"
            self.get_logger().error(self._streams.error)
            return TransitionCallbackReturn.FAILURE
        self._intake.subscribe()
        self._worker.start()
        return super().on_configure(state)

    def _adopt_model_settings(self) -> None:
        """Take the model's ``svlm_settings.json`` (if it has one) as the defaults of the
        parameters it names; log what it set, and warn about given values that differ and
        about a model trained on another framing than the engine renders.

        Raises:
            ValueError: the file is unreadable or broken (the message names file and key), or
                its values break a rule of the node's parameters.
        """
        model_path = self._values["model_path"]
        settings = model_settings.read_settings(model_path) if model_path else None
        source = str(model_settings.settings_path(model_path)) if model_path else ""
        merged = model_defaults(settings, self._values, self._given, source)
        logger = self.get_logger()
        for warning in merged.warnings:
            logger.warning(warning)
        if merged.changes:
            with self._setting_own_parameters():
                result = self.set_parameters_atomically(
                    [Parameter(name, value=value) for name, value in merged.changes.items()])
            if not result.successful:
                raise ValueError(f"the settings of {source or 'the defaults'} cannot be used: "
                                 f"{result.reason}")
        self._streams.model_settings = settings
        self._streams.model_settings_source = source if settings is not None else ""
        self._streams.model_settings_warning = (
            settings is not None and model_settings.format_warning(settings, source) or "")
        if settings is not None:
            taken = [name for name in narrator_params.MODEL_SETTING_PARAMETERS
                     if name not in self._given]
            logger.info(f"model settings from {source} (format {settings.format}): "
                        + (", ".join(f"{name}={self._values[name]!r}" for name in taken)
                           or "every one of them given explicitly"))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Publishers first: a round woken before them would publish into an inactive
        # publisher (dropped) while counting the second as narrated.
        result = super().on_activate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._worker.activate()
        self.get_logger().info("active: narrating")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Before the publishers: the round in progress is interrupted and discarded, asks
        # waiting for the model are refused.
        self._worker.deactivate()
        self.get_logger().info("inactive: narration paused")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unload()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._streams.set_active(False)
        self._unload()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._streams.set_active(False)
        self._unload()
        return TransitionCallbackReturn.SUCCESS

    def _unload(self) -> None:
        """Stop the worker, unsubscribe, drop the sessions and the model, free GPU memory."""
        self._worker.stop()
        self._intake.unsubscribe()
        self._streams.unload()

    def close(self) -> bool:
        """Stop the worker and destroy the node (process exit path); safe to call again.

        Returns False, leaving the node as it is, while the worker thread is still inside a
        step after the join (one with no token to stop at: a first-round torch.compile, a
        CUDA call): destroying the node under it could crash the process. ``main`` exits then.
        """
        self._streams.set_active(False)
        if not self._worker.stop():
            self.get_logger().error(
                "the narration worker is still in a model step (a first-round torch.compile "
                "or a CUDA call cannot be interrupted); leaving the node as it is")
            return False
        if not self._closed:
            self._closed = True
            self.destroy_node()
        return True


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT, SIGTERM or shutdown; returns the process exit status."""
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a node that
    # does not stop, or stops narrating, is waiting, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a non-interactive shell, which ignores SIGINT for its
        # background jobs: a ROS node is stopped with SIGINT (ros2 launch sends it), so take
        # it back; rclpy's handler then passes it on to Python's.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    rclpy.init(args=args)
    node: NarratorNode | None = None
    executor: MultiThreadedExecutor | None = None
    status = 0
    try:
        try:
            node = NarratorNode()
        except (ValueError, ParameterException) as error:
            hint = ""
            if "expecting type 'DOUBLE'" in str(error):
                hint = " (write decimal parameters with a point, e.g. 2.0 rather than 2)"
            rclpy.logging.get_logger(NODE_NAME).fatal(f"invalid parameters: {error}{hint}")
            status = 1
            return status
        executor = SteadyMultiThreadedExecutor(num_threads=node.executor_threads)
        executor.add_node(node)
        if node.autostart:
            # On an executor thread once spinning: while a large model loads (tens of
            # seconds), status, lifecycle and parameter services already answer.
            executor.create_task(node.start)
        try:
            # spin() with a bounded wait: the main thread comes back to Python at least every
            # SPIN_WAKE_SECONDS, so a SIGINT that Python's handler saw (rclpy chains to it)
            # raises KeyboardInterrupt even if rclpy's own shutdown of the context got lost.
            # A CI run had the node sit in an unbounded wait 30 s after SIGINT, stacks showing.
            while rclpy.ok():
                executor.spin_once(timeout_sec=SPIN_WAKE_SECONDS)
        except RCLError:
            # A signal shuts the context down between two iterations of spin; the next wait
            # set then fails with "context is not valid" instead of ExternalShutdownException.
            # That is a normal shutdown; with the context still valid it is a real error.
            if rclpy.ok():
                raise
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Whatever blocks from here on (this cleanup, or the interpreter joining a pool thread
        # at exit), the process ends within the README's 5 s, with the stacks in the log.
        exit_watchdog.arm(EXIT_DEADLINE_SECONDS, status)
        # rclpy's signal handler both shuts the context down (ending spin) and passes the
        # signal on to Python, so a KeyboardInterrupt may still arrive in here; every step is
        # idempotent, so finish them again rather than leaving with a traceback.
        for _ in range(3):
            try:
                if node is not None and not node.close():
                    _exit_leaving_worker(executor)
                if executor is not None:
                    executor.shutdown(timeout_sec=1.0)
                rclpy.try_shutdown()
                break
            except KeyboardInterrupt:
                continue
    return status


def _exit_leaving_worker(executor: MultiThreadedExecutor | None) -> None:
    """End the process with status 0 while the worker thread is inside a model step: without
    destroying the node under it (nor shutting rclpy down, which destroys the context's
    nodes), and without the interpreter's teardown running beside it (``os._exit``)."""
    if executor is not None:
        executor.shutdown(timeout_sec=1.0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
