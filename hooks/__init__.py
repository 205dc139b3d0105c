"""Eve event hooks, one module per resource, and the job lifecycle hooks
(hooks/job_events.py), wired by register(app)."""

from typing import TYPE_CHECKING

from hooks import job_events

if TYPE_CHECKING:
    from eve import Eve


def register(app: "Eve") -> None:
    """Attach every hook to the app, grouped by resource; domain errors answer as themselves."""
    # Imported here, not above: worker processes import hooks.job_events (and so this
    # package) without Eve or Flask.
    from hooks import items, jobs, models, pagination
    from service.api.errors import as_http_errors

    job_events.register(app.extensions["sibyl"].events)

    app.on_fetched_resource += pagination.on_fetched_resource
    app.on_fetched_item += pagination.on_fetched_item
    app.on_pre_DELETE += items.on_pre_DELETE

    app.on_pre_GET_jobs += as_http_errors(jobs.on_pre_GET_jobs)
    app.on_fetched_resource_jobs += jobs.on_fetched_resource_jobs
    app.on_fetched_item_jobs += jobs.on_fetched_item_jobs
    app.on_update_jobs += as_http_errors(jobs.on_update_jobs)
    app.on_updated_jobs += as_http_errors(jobs.on_updated_jobs)
    app.on_delete_item_jobs += as_http_errors(jobs.on_delete_item_jobs)
    app.on_deleted_item_jobs += as_http_errors(jobs.on_deleted_item_jobs)

    app.on_pre_POST_models += as_http_errors(models.on_pre_POST_models)
    app.on_insert_models += as_http_errors(models.on_insert_models)
    app.on_inserted_models += as_http_errors(models.on_inserted_models)
    app.on_pre_PATCH_models += as_http_errors(models.on_pre_PATCH_models)
    app.on_update_models += as_http_errors(models.on_update_models)
    app.on_updated_models += as_http_errors(models.on_updated_models)
    app.on_delete_item_models += as_http_errors(models.on_delete_item_models)
    app.on_deleted_item_models += as_http_errors(models.on_deleted_item_models)
