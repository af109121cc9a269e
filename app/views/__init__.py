"""Qt views of the workbench window; each observes a Qt-free view model from `app.view_models`."""
