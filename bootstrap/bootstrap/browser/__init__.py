"""The browser stage's pieces: Debian's headless Chromium over CDP, and the server for frontend/.
Imported only by bootstrap.stages.browser_join (--browser)."""
