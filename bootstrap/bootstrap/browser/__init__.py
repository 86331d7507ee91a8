"""The browser pieces: Debian's headless Chromium over CDP, the server for frontend/, and the page as a participant.
Imported only when a browser joins: by the browser mode (bootstrap.modes.in_browser.browser_join, --browser) and by
the paths mode for a browser path (page_client, from bootstrap.modes.paths.path_stages); never by a single run
(tests/test_layout.py)."""
