"""One module of console pages per noun, as the API has one router per resource."""
