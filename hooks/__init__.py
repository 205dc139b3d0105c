"""Eve event hooks, one module per resource, wired by register(app)."""

from eve import Eve

from hooks import jobs, models, pagination


def register(app: Eve) -> None:
    """Attach every hook to the app, grouped by resource."""
    app.on_fetched_resource += pagination.on_fetched_resource

    app.on_pre_POST_jobs += jobs.on_pre_POST_jobs
    app.on_insert_jobs += jobs.on_insert_jobs
    app.on_inserted_jobs += jobs.on_inserted_jobs
    app.on_post_POST_jobs += jobs.on_post_POST_jobs
    app.on_pre_GET_jobs += jobs.on_pre_GET_jobs
    app.on_update_jobs += jobs.on_update_jobs
    app.on_delete_item_jobs += jobs.on_delete_item_jobs
    app.on_deleted_item_jobs += jobs.on_deleted_item_jobs

    app.on_insert_models += models.on_insert_models
    app.on_inserted_models += models.on_inserted_models
    app.on_delete_item_models += models.on_delete_item_models
    app.on_deleted_item_models += models.on_deleted_item_models
