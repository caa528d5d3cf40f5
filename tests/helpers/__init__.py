"""Test helpers shared by the test modules: fakes of the guest agent, the backend, the
Docker API and the Windows host, a 9P client, and the paths of the repository and the
recorded fixtures. Nothing here is collected as a test; import it absolutely, e.g.
`from tests.helpers.fakes import FakeDriver`."""
