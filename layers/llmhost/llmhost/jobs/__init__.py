"""Jobs: chat and RAG requests answered later (the Jobs API, its worker, batch lines).

``record`` is the job and its rules (pure), ``store`` its DynamoDB table, ``service`` the
operations the routes and the worker call.
"""
