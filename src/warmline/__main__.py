from warmline.cli import app

app()
