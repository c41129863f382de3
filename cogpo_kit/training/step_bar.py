"""Training steps as a :func:`cogpo_kit.progress.progress` bar: optimizer steps done, rate, ETA and the last loss.

The bar is the kit's own (a widget in JupyterLab, text on stderr in a terminal and in notebooks run by
``cogpo-kit run``, which forwards it to the terminal), not transformers' notebook table, so a training
stage shows its progress where every other stage does. Only the main process draws it.

    trainer.add_callback(StepBar("crv_sft"))   # with the trainer built with disable_tqdm=True
"""

from __future__ import annotations

from transformers import TrainerCallback


class StepBar(TrainerCallback):
    """One bar per ``trainer.train()``: ``<desc>: 3/8 step [00:12<00:20, 4.1s/step, loss=0.693]``."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from cogpo_kit.progress import progress

            self.bar = progress(total=state.max_steps, desc=self.desc, unit="step", initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            shown = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "rewards/margins", "learning_rate")
                     and isinstance(v, (int, float))}
            if shown:
                self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_step_bar(trainer, desc: str):
    """Replace transformers' own progress display (and its printed log dicts) with a :class:`StepBar`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)
    try:
        from transformers.utils.notebook import NotebookProgressCallback

        trainer.remove_callback(NotebookProgressCallback)
    except ImportError:
        pass
    trainer.add_callback(StepBar(desc))
    return trainer
