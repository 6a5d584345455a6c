"""Local GitLab pipelines (gitlab-ci-local) and what they prove about the GitLab front end."""
