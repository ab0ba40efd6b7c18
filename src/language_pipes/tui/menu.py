"""The main menu and its dialogs: new configuration, load (open or delete) one, confirm."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from language_pipes.config import ConfigError
from language_pipes.paths import configs_dir
from language_pipes.tui.config_document import create_config, delete_config, saved_config_names


class MainMenu(Screen[None]):
    """New Configuration, Load Configuration, Exit."""

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="menu"):
            yield Static("Language Pipes", id="menu-title")
            yield Static("Serve open language models from a network of computers.", id="menu-subtitle")
            yield Button("New Configuration", id="new-config", variant="primary")
            yield Button("Load Configuration", id="load-config")
            yield Button("Exit", id="exit", variant="error")
        yield Footer()

    @on(Button.Pressed, "#new-config")
    def new_config(self) -> None:
        self.app.push_screen(NewConfigScreen())

    @on(Button.Pressed, "#load-config")
    def load_config(self) -> None:
        self.app.push_screen(LoadConfigScreen())

    @on(Button.Pressed, "#exit")
    async def exit_app(self) -> None:
        await self.app.action_quit()


class NewConfigScreen(ModalScreen[None]):
    """Ask a name and create ``$LP_APP_DIR/configs/NAME.toml``."""

    BINDINGS = [("escape", "app.pop_screen", "Back")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Name of the new configuration")
            yield Input(placeholder="e.g. my-node", id="config-name")
            yield Static("", id="new-config-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Create", id="create", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.app.pop_screen()

    @on(Input.Submitted, "#config-name")
    @on(Button.Pressed, "#create")
    def create(self) -> None:
        name = self.query_one("#config-name", Input).value
        try:
            path = create_config(name)
        except ConfigError as error:
            # A bad or taken name: say why and let the user try another.
            self.query_one("#new-config-error", Static).update(str(error))
            return
        self.app.pop_screen()
        self.app.open_config(path)  # type: ignore[attr-defined]


class LoadConfigScreen(ModalScreen[None]):
    """Pick a saved configuration to open or delete."""

    BINDINGS = [("escape", "app.pop_screen", "Back")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Saved configurations in {configs_dir()}")
            yield OptionList(id="config-list")
            yield Static("", id="load-config-message")
            with Horizontal(classes="buttons"):
                yield Button("Open", id="open", variant="primary")
                yield Button("Delete", id="delete", variant="error")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.reload()

    def reload(self) -> None:
        options = self.query_one("#config-list", OptionList)
        options.clear_options()
        names = saved_config_names()
        options.add_options([Option(name, id=name) for name in names])
        if names:
            options.highlighted = 0
        message = "" if names else "No saved configurations yet: create one with New Configuration."
        self.query_one("#load-config-message", Static).update(message)

    def _selected(self) -> str | None:
        options = self.query_one("#config-list", OptionList)
        if options.highlighted is None:
            return None
        return options.get_option_at_index(options.highlighted).id

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.app.pop_screen()

    @on(OptionList.OptionSelected, "#config-list")
    @on(Button.Pressed, "#open")
    def open_selected(self) -> None:
        name = self._selected()
        if name is None:
            return
        self.app.pop_screen()
        self.app.open_config(configs_dir() / f"{name}.toml")  # type: ignore[attr-defined]

    @on(Button.Pressed, "#delete")
    def delete_selected(self) -> None:
        name = self._selected()
        if name is None:
            return

        def confirmed(answer: bool | None) -> None:
            if answer:
                delete_config(name)
                self.reload()

        self.app.push_screen(
            ConfirmScreen(f"Delete the configuration {name!r}? This cannot be undone."), confirmed
        )


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question."""

    BINDINGS = [("escape", "answer_no", "No")]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, id="yes", variant="error")
                yield Button("Cancel", id="no")

    @on(Button.Pressed, "#yes")
    def answer_yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_answer_no(self) -> None:
        self.dismiss(False)
