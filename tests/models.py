"""Small real models the tests export, written as a user would write them."""

CNN = '''
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def make():
    torch.manual_seed(0)
    net = Net()
    net.bn.running_mean.uniform_(-0.5, 0.5)
    net.bn.running_var.uniform_(0.5, 2.0)
    return net, (torch.randn(1, 3, 16, 16),)


def bare():
    return Net()
'''

MLP = '''
def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Linear(32, 3)), (torch.randn(4, 10),)
'''

TWO_OUTPUTS = '''
class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 2)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return {"logits": self.a(x), "embedding": self.b(x)}


def make():
    torch.manual_seed(0)
    return Two(), (torch.randn(2, 6),)
'''

ENCODER = '''
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, ids, mask):
        return self.head(self.enc(self.emb(ids), src_key_padding_mask=mask == 0)[:, 0])


def make():
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 8:] = 0
    return Encoder(), {"ids": ids, "mask": mask}
'''

UNSUPPORTED_OP = '''
@torch.library.custom_op("modelport_test::twist", mutates_args=())
def twist(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1) * 2


@twist.register_fake
def _(x):
    return torch.empty_like(x)


class Twister(nn.Module):
    def forward(self, x):
        return twist(x)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.block = Twister()

    def forward(self, x):
        return self.block(self.lin(x))


def make():
    return Outer(), (torch.randn(2, 4),)
'''

DETERMINANT = """
class Det(nn.Module):
    def forward(self, x):
        return torch.linalg.det(x)


def make():
    return Det(), (torch.randn(1, 4, 4),)
"""

SIGMOID_HEAD = '''
class Head(nn.Module):
    """A functional ReLU fused into its conv and a functional sigmoid ending the model: ops of no module."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        return torch.sigmoid(self.fc(torch.relu(self.conv(x)).mean((2, 3))))


def make():
    torch.manual_seed(0)
    net = Head()
    with torch.no_grad():
        net.fc.bias -= 5.0  # outputs near 0, where the int8 LOGISTIC's fixed 1/256 output step is coarse
    return net.eval(), (torch.randn(1, 3, 16, 16),)
'''

POOLED = '''
class Pooled(nn.Module):
    """Convs with functional max-pools after them: MaxPool nodes of no module of their own."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc(x.flatten(1))


def make():
    torch.manual_seed(0)
    return Pooled().eval(), (torch.randn(1, 3, 16, 16),)
'''
