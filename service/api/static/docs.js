// Swagger UI on /v1/openapi.json; "Authorize" takes a key, which "Try it out" sends
// as a bearer header. The key stays in this page's memory.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: false,
  });
});
